// A small omniglot-shaped cache (1x28x28) whose classes are learnable: each class is a
// fixed random stroke pattern plus per-image noise. 'background' and 'evaluation' classes
// so the background split works with few classes.
import { ImageCacheWriter } from '../../src/data/imageCache.js';

export async function writeSyntheticOmniglot(dir: string, background = 12, evaluation = 8, images = 6): Promise<void> {
  const writer = new ImageCacheWriter(dir, { dataset: 'omniglot', imageShape: [1, 28, 28], invert: true });
  let seed = 12345;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  for (let c = 0; c < background + evaluation; c++) {
    const source = c < background ? 'background' : 'evaluation';
    writer.beginClass(`alphabet${c % 3}/character${String(c).padStart(2, '0')}`, `alphabet${c % 3}`, source);
    const pattern = Uint8Array.from({ length: 784 }, () => (random() < 0.15 ? 0 : 255));
    for (let i = 0; i < images; i++) {
      const pixels = Uint8Array.from(pattern, (v) => (random() < 0.05 ? 255 - v : v));
      await writer.append(pixels, `images_${source}/class${c}/${i}.png`);
    }
  }
  await writer.finish({ sourceChecksum: 'synthetic' });
}
