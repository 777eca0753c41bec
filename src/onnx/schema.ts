// The subset of the ONNX protobuf schema (onnx/onnx.proto, IR version 8) that export and
// predict need, loaded with protobufjs: protobufjs does all the encoding and decoding.
// Field numbers and enum values are copied from the official onnx.proto (syntax proto2,
// so repeated scalars are unpacked unless onnx.proto says [packed = true]).
// Fields we never write (sparse tensors, training info, functions, external data...) are
// left out; protobufjs skips unknown fields when decoding models written by other tools.
import protobuf from 'protobufjs';

export const ONNX_PROTO = `
syntax = "proto2";
package onnx;

message AttributeProto {
  enum AttributeType {
    UNDEFINED = 0;
    FLOAT = 1;
    INT = 2;
    STRING = 3;
    TENSOR = 4;
    GRAPH = 5;
    SPARSE_TENSOR = 11;
    TYPE_PROTO = 13;
    FLOATS = 6;
    INTS = 7;
    STRINGS = 8;
    TENSORS = 9;
    GRAPHS = 10;
    SPARSE_TENSORS = 12;
    TYPE_PROTOS = 14;
  }
  optional string name = 1;
  optional string ref_attr_name = 21;
  optional string doc_string = 13;
  optional AttributeType type = 20;
  optional float f = 2;
  optional int64 i = 3;
  optional bytes s = 4;
  optional TensorProto t = 5;
  optional GraphProto g = 6;
  repeated float floats = 7;
  repeated int64 ints = 8;
  repeated bytes strings = 9;
  repeated TensorProto tensors = 10;
  repeated GraphProto graphs = 11;
}

message ValueInfoProto {
  optional string name = 1;
  optional TypeProto type = 2;
  optional string doc_string = 3;
}

message NodeProto {
  repeated string input = 1;
  repeated string output = 2;
  optional string name = 3;
  optional string op_type = 4;
  optional string domain = 7;
  repeated AttributeProto attribute = 5;
  optional string doc_string = 6;
}

message StringStringEntryProto {
  optional string key = 1;
  optional string value = 2;
}

message OperatorSetIdProto {
  optional string domain = 1;
  optional int64 version = 2;
}

message ModelProto {
  optional int64 ir_version = 1;
  repeated OperatorSetIdProto opset_import = 8;
  optional string producer_name = 2;
  optional string producer_version = 3;
  optional string domain = 4;
  optional int64 model_version = 5;
  optional string doc_string = 6;
  optional GraphProto graph = 7;
  repeated StringStringEntryProto metadata_props = 14;
}

message GraphProto {
  repeated NodeProto node = 1;
  optional string name = 2;
  repeated TensorProto initializer = 5;
  optional string doc_string = 10;
  repeated ValueInfoProto input = 11;
  repeated ValueInfoProto output = 12;
  repeated ValueInfoProto value_info = 13;
}

message TensorProto {
  enum DataType {
    UNDEFINED = 0;
    FLOAT = 1;
    UINT8 = 2;
    INT8 = 3;
    UINT16 = 4;
    INT16 = 5;
    INT32 = 6;
    INT64 = 7;
    STRING = 8;
    BOOL = 9;
    FLOAT16 = 10;
    DOUBLE = 11;
    UINT32 = 12;
    UINT64 = 13;
    COMPLEX64 = 14;
    COMPLEX128 = 15;
    BFLOAT16 = 16;
  }
  repeated int64 dims = 1;
  optional int32 data_type = 2;
  repeated float float_data = 4 [packed = true];
  repeated int32 int32_data = 5 [packed = true];
  repeated bytes string_data = 6;
  repeated int64 int64_data = 7 [packed = true];
  optional string name = 8;
  optional string doc_string = 12;
  optional bytes raw_data = 9;
  repeated double double_data = 10 [packed = true];
  repeated uint64 uint64_data = 11 [packed = true];
}

message TensorShapeProto {
  message Dimension {
    oneof value {
      int64 dim_value = 1;
      string dim_param = 2;
    }
    optional string denotation = 3;
  }
  repeated Dimension dim = 1;
}

message TypeProto {
  message Tensor {
    optional int32 elem_type = 1;
    optional TensorShapeProto shape = 2;
  }
  oneof value {
    Tensor tensor_type = 1;
  }
  optional string denotation = 6;
}
`;

/** AttributeProto.AttributeType values used by the exporter. */
export const AttributeType = { FLOAT: 1, INT: 2, STRING: 3, TENSOR: 4, FLOATS: 6, INTS: 7 } as const;
/** TensorProto.DataType values used by the exporter. */
export const DataType = { FLOAT: 1, INT64: 7 } as const;

/** Plain-object forms of the messages (what protobufjs `create` / `toObject` take and give). */
export interface TensorShapeDimension { dimValue?: number; dimParam?: string }
export interface ValueInfo {
  name: string;
  type: { tensorType: { elemType: number; shape: { dim: TensorShapeDimension[] } } };
}
export interface Tensor {
  name: string;
  dims: number[];
  dataType: number;
  rawData?: Uint8Array;
  int64Data?: number[];
  floatData?: number[];
}
export interface Attribute {
  name: string;
  type: number;
  f?: number;
  i?: number;
  s?: Uint8Array;
  t?: Tensor;
  floats?: number[];
  ints?: number[];
}
export interface Node {
  name: string;
  opType: string;
  domain?: string;
  input: string[];
  output: string[];
  attribute: Attribute[];
}
export interface Graph {
  name: string;
  docString?: string;
  node: Node[];
  initializer: Tensor[];
  input: ValueInfo[];
  output: ValueInfo[];
}
export interface Model {
  irVersion: number;
  opsetImport: { domain: string; version: number }[];
  producerName: string;
  producerVersion: string;
  domain?: string;
  modelVersion?: number;
  docString?: string;
  graph: Graph;
  metadataProps: { key: string; value: string }[];
}

let root: protobuf.Root | undefined;

/** The parsed schema (parsed once). */
export function onnxRoot(): protobuf.Root {
  if (!root) root = protobuf.parse(ONNX_PROTO, { keepCase: false }).root;
  return root;
}

export function modelType(): protobuf.Type {
  return onnxRoot().lookupType('onnx.ModelProto');
}

/** Encodes a ModelProto; verifies it against the schema first so mistakes name the field. */
export function encodeModel(model: Model): Uint8Array {
  const type = modelType();
  const problem = type.verify(model);
  if (problem) throw new Error(`ONNX model does not fit the schema: ${problem}`);
  return type.encode(type.fromObject(model)).finish();
}

/** Decodes ModelProto bytes into plain objects (int64 as numbers, bytes as Uint8Array). */
export function decodeModel(bytes: Uint8Array): Model {
  const type = modelType();
  let message: protobuf.Message;
  try {
    message = type.decode(bytes);
  } catch (error) {
    throw new Error(`not an ONNX model (ModelProto did not decode: ${(error as Error).message})`);
  }
  return type.toObject(message, { longs: Number, defaults: false, arrays: true }) as Model;
}
