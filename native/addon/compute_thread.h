// Every native call of the addon runs on one long-lived thread.
//
// Node hands each async call to any thread of its pool (4 by default), and every thread
// that starts OpenMP work becomes the master of a team of its own. With several teams
// alive on 2 cores, libgomp's threads outnumber the CPUs, so it stops spinning between
// parallel regions and sleeps at once; a meta-batch runs thousands of regions, and each
// then pays a wake-up: MiniImagenet 5w1s ran about 30% slower from Node than from the C++
// bench. One calling thread keeps one team (as the C++ bench has).
#pragma once
#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

namespace maml_addon {

class ComputeThread {
 public:
  // The one thread, started on first use and never stopped (it sleeps while idle, and the
  // process ends it at exit).
  static ComputeThread& instance() {
    static ComputeThread* thread = new ComputeThread();
    return *thread;
  }

  // Runs job on the compute thread and waits for it; an exception it throws is rethrown here.
  // Callers (Node's pool threads) take turns.
  void run(const std::function<void()>& job) {
    std::unique_lock<std::mutex> turn(turn_);
    std::unique_lock<std::mutex> lock(mutex_);
    job_ = &job;
    error_ = nullptr;
    done_ = false;
    wake_.notify_one();
    finished_.wait(lock, [&] { return done_; });
    if (error_) std::rethrow_exception(error_);
  }

 private:
  ComputeThread() { std::thread([this] { loop(); }).detach(); }

  void loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return job_ != nullptr; });
      const std::function<void()>* job = job_;
      lock.unlock();
      std::exception_ptr error;
      try {
        (*job)();
      } catch (...) {
        error = std::current_exception();
      }
      lock.lock();
      job_ = nullptr;
      error_ = error;
      done_ = true;
      finished_.notify_one();
    }
  }

  std::mutex turn_, mutex_;
  std::condition_variable wake_, finished_;
  const std::function<void()>* job_ = nullptr;
  std::exception_ptr error_;
  bool done_ = false;
};

}  // namespace maml_addon
