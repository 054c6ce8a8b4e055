// cuda_emu.h - just enough of CUDA C++ to run fastvae's kernels on the CPU, faithfully or not at all (tests).
// Each block's threads are fibers (ucontext) on one OS thread; blocks run one after another. Reads/writes only
// what the kernels touch, plus its own scheduler state; a launch that cannot be emulated faithfully is refused.
//
// The rules, and why they keep the emulation honest:
// * __syncthreads() is a real barrier: a fiber runs until it reaches one (or exits), and the block resumes only
//   when every thread waits at the same __syncthreads (same file and line). A thread exiting while others wait,
//   or threads waiting at different barriers, is an error (undefined behaviour on a GPU), never a hang.
// * Within a phase (between two barriers) the threads run in a fresh pseudo-random order each time, so code that
//   reads another thread's shared-memory write without a barrier between them gets different answers.
// * __shared__ variables are function statics (one per block, blocks run in turn); the Python side finds them in
//   the built library's symbol table and registers them, and they are filled with 0xFF (NaN for floats) before
//   each block, so a read of shared memory nobody wrote shows up. Per-thread locals are pattern-initialised.
// * Launch limits are a GPU's (1024 threads per block, 64 in z, 48 KiB static shared memory, grid y/z <= 65535);
//   dynamic shared memory and other features not defined here do not compile or are refused at launch, with a
//   message naming them.
// * Warp collectives (__shfl*_sync, __syncwarp, __ballot_sync, __any_sync, __all_sync) are a barrier of the warp's
//   lanes plus an exchange: every lane of the warp (32 consecutive linear thread indices; a last, partial warp has
//   fewer) must reach the same one with the same mask, and the mask must name them all. A lane that exited or waits
//   elsewhere, a partial mask, or a shuffle reading a lane the partial warp lacks is an error.
// * Blocks run one after another, in a shuffled order; a launch running longer than a timeout (600 s by default)
//   ends the process with a message instead of hanging.
// * Data races between the threads of a block (same memory, no barrier between, one of them writing) are reported
//   by the race-checking build (ThreadSanitizer, below; fastvae.cuda.emu.RawModule(..., race_check=True)). The
//   plain build does not see races on global memory within a phase (each thread runs to its next barrier
//   without interleaving). Races between blocks are detected by neither.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <math.h>
#include <mutex>
#include <numeric>
#include <csignal>
#include <ctime>
#include <unistd.h>
#include <string>
#include <sys/mman.h>
#include <type_traits>
#include <ucontext.h>
#include <utility>
#include <vector>

// Race checking (built with -fsanitize=thread): each fiber is a ThreadSanitizer fiber, switched to without
// synchronisation, so two threads of a block touching the same memory between two barriers, one of them writing,
// is reported as a data race; __syncthreads orders everything before it before everything after it (per phase).
// Blocks are ordered one after another here (their shared memory is the same storage), so races between blocks
// are not reported. Atomics are relaxed, as CUDA's are: they do not order other accesses.
#if defined(__SANITIZE_THREAD__)
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}
#define CUDA_EMU_TSAN(...) __VA_ARGS__
#else
#define CUDA_EMU_TSAN(...)
#endif

struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static
#define warpSize 32

namespace cuda_emu {

enum State { RUNNABLE, WAITING, DONE };
// What a waiting thread waits at: the block barrier, or a warp collective (all lanes of its warp take part).
enum Op { BARRIER, SYNCWARP, SHFL, SHFL_UP, SHFL_DOWN, SHFL_XOR, BALLOT, ANY, ALL };
inline const char* const op_names[] = {"__syncthreads", "__syncwarp", "__shfl_sync", "__shfl_up_sync",
                                       "__shfl_down_sync", "__shfl_xor_sync", "__ballot_sync", "__any_sync",
                                       "__all_sync"};

// An atomic with relaxed loads and stores only: no synchronisation a race checker could mistake for the kernel's.
template <class T> struct Relaxed {
    std::atomic<T> v;
    Relaxed(T x = T()) : v(x) {}
    operator T() const { return v.load(std::memory_order_relaxed); }
    Relaxed& operator=(T x) { v.store(x, std::memory_order_relaxed); return *this; }
    T operator->() const { return *this; }
    T load() const { return *this; }
};

struct Fiber {
    ucontext_t ctx;
    // The scheduler's bookkeeping is atomic (relaxed) so a race-checking build sees no race in the harness itself.
    uint3 tid;
    Relaxed<State> state;
    Relaxed<const char*> wait_file;
    Relaxed<int> wait_line;
    Relaxed<int> op;                         // BARRIER or the warp collective it waits at, with its operands:
    Relaxed<unsigned> mask;
    Relaxed<int> param, width;               // source lane, delta or lane mask; segment width
    Relaxed<unsigned long long> value, result;
    void* tsan = nullptr;                    // its ThreadSanitizer fiber (race-checking builds)
};

inline Relaxed<Fiber*> current{nullptr};  // the CUDA thread running now (null outside a launch)
inline uint3 block_idx;
inline dim3 block_dim, grid_dim;
inline ucontext_t scheduler;
inline std::function<void()> body;          // the kernel call with its arguments, run by every fiber
inline std::string error;                   // why the last launch failed ("" when it did not)
inline unsigned schedule_mode = 0;          // 0: shuffled phases (default), 1: thread order, 2: reverse order
inline uint64_t schedule_state = 0x9E3779B97F4A7C15ull;
inline unsigned long long barriers_passed = 0;
inline Relaxed<unsigned long long> phase{0};  // barrier phases completed in this block
inline Relaxed<void*> host_fiber{nullptr};
inline char sync_tokens[4];                 // ThreadSanitizer sync objects: [phase & 1] barriers, [2] start, [3] end
inline Relaxed<unsigned> warp_phase[32];    // __syncwarp phases per warp, and their sync objects
inline char warp_tokens[32][2];

// A fiber's stack: 256 KiB with an inaccessible guard page below it, so an overflow faults instead of corrupting.
constexpr size_t STACK = 256 * 1024, GUARD = 4096;
inline std::vector<char*> stacks;

inline char* stack(size_t i)
{
    while (stacks.size() <= i) {
        void* p = mmap(nullptr, STACK + GUARD, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { std::fprintf(stderr, "cuda_emu: cannot map a fiber stack\n"); std::abort(); }
        mprotect(p, GUARD, PROT_NONE);
        stacks.push_back(static_cast<char*>(p) + GUARD);
    }
    return stacks[i];
}

[[noreturn]] inline void outside_launch(const char* what)
{
    std::fprintf(stderr, "cuda_emu: %s called outside a kernel launch\n", what);
    std::abort();
}

inline void syncthreads(const char* file, int line)
{
    Fiber* f = current;
    if (!f) outside_launch("__syncthreads");
    f->state = WAITING;
    f->op = BARRIER;
    f->wait_file = file;
    f->wait_line = line;
    void* token = &sync_tokens[phase.load() & 1];
    (void)token;
    CUDA_EMU_TSAN(__tsan_release(token); __tsan_switch_to_fiber(host_fiber, 1);)
    swapcontext(&f->ctx, &scheduler);       // back to the scheduler; resumed when the whole block has arrived
    CUDA_EMU_TSAN(__tsan_acquire(token);)
}

inline void fiber_entry()
{
    CUDA_EMU_TSAN(__tsan_acquire(&sync_tokens[2]);)
    body();
    current->state = DONE;
    CUDA_EMU_TSAN(__tsan_release(&sync_tokens[3]); __tsan_switch_to_fiber(host_fiber, 1);)
    setcontext(&scheduler);                 // never returns: a return would run this frame's race-checker
}                                           // bookkeeping on the scheduler's side of the switch

inline unsigned long long warp_collective(Op op, const char* file, int line, unsigned mask,
                                          unsigned long long value = 0, int param = 0, int width = 32)
{
    Fiber* f = current;
    if (!f) outside_launch(op_names[op]);
    f->op = op;
    f->mask = mask;
    f->value = value;
    f->param = param;
    f->width = width;
    f->wait_file = file;
    f->wait_line = line;
    f->state = WAITING;
    const unsigned t = f->tid.x + block_dim.x * (f->tid.y + block_dim.y * f->tid.z);
    void* token = &warp_tokens[t / 32][warp_phase[t / 32] & 1];
    (void)token;
    CUDA_EMU_TSAN(if (op == SYNCWARP) __tsan_release(token); __tsan_switch_to_fiber(host_fiber, 1);)
    swapcontext(&f->ctx, &scheduler);       // resumed when every lane of the warp has arrived
    CUDA_EMU_TSAN(if (op == SYNCWARP) __tsan_acquire(token);)
    return f->result;
}

inline void syncwarp(const char* file, int line, unsigned mask = 0xffffffffu)
{
    warp_collective(SYNCWARP, file, line, mask);
}

template <class T> inline unsigned long long to_bits(T v)
{
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "cuda_emu: shuffles move values of at most 8 bytes");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    return bits;
}

template <class T> inline T shuffle(Op op, const char* file, int line, unsigned mask, T var, int param,
                                    int width = 32)
{
    const unsigned long long bits = warp_collective(op, file, line, mask, to_bits(var), param, width);
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}

inline uint64_t next_random()
{
    uint64_t x = schedule_state;             // xorshift64*
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    schedule_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

inline void order_for_phase(std::vector<unsigned>& order)
{
    const size_t n = order.size();
    for (size_t i = 0; i < n; ++i) order[i] = schedule_mode == 2 ? unsigned(n - 1 - i) : unsigned(i);
    if (schedule_mode == 0)
        for (size_t i = n - 1; i > 0; --i) std::swap(order[i], order[next_random() % (i + 1)]);
}

inline std::vector<std::pair<char*, size_t>> shared_regions;    // every __shared__ variable of the module

inline size_t static_shared_bytes()
{
    size_t total = 0;
    for (const auto& region : shared_regions) total += region.second;
    return total;
}

inline std::string where(const Fiber& f)
{
    return std::string(f.wait_file.load()) + ":" + std::to_string(f.wait_line.load());
}

inline std::string block_name()
{
    return "block (" + std::to_string(block_idx.x) + ", " + std::to_string(block_idx.y) + ", " +
           std::to_string(block_idx.z) + ")";
}

// Runs one block to completion; false (with `error` set) when it cannot be emulated faithfully.
inline std::string thread_name(const Fiber& f)
{
    return "thread (" + std::to_string(f.tid.x) + ", " + std::to_string(f.tid.y) + ", " + std::to_string(f.tid.z) +
           ")";
}

// Completes every warp collective whose warp has arrived in full: 1 if one was, 0 if none waits, -1 (error set)
// if one cannot complete faithfully: a lane of the warp exited or waits elsewhere, a mask that leaves out a lane,
// lanes that disagree on the operation, or a shuffle that reads a lane the (partial) warp does not have.
inline int resolve_warps(std::vector<Fiber>& fibers)
{
    int progress = 0;
    const size_t n = fibers.size();
    for (size_t lo = 0; lo < n; lo += 32) {
        const size_t hi = std::min(n, lo + 32), lanes = hi - lo;
        const Fiber* lead = nullptr;
        for (size_t l = lo; l < hi && !lead; ++l)
            if (fibers[l].state == WAITING && fibers[l].op != BARRIER) lead = &fibers[l];
        if (!lead) continue;
        const std::string what = std::string(op_names[lead->op]) + " (" + where(*lead) + ")";
        const unsigned present = lanes == 32 ? ~0u : (1u << lanes) - 1;
        auto fail = [&](const std::string& why) {
            error = block_name() + ", warp " + std::to_string(lo / 32) + ": " + thread_name(*lead) + " waits at " +
                    what + " but " + why;
            return -1;
        };
        if ((lead->mask & present) != present)
            return fail("its mask 0x" + [&] { char b[16]; std::snprintf(b, sizeof b, "%08x", unsigned(lead->mask));
                                               return std::string(b); }() +
                        " leaves out lanes of the warp (partial-warp collectives are not emulated)");
        unsigned long long ballot = 0;
        for (size_t l = lo; l < hi; ++l) {
            const Fiber& f = fibers[l];
            if (f.state == DONE) return fail(thread_name(f) + ", a lane of the same warp, has exited");
            if (f.op == BARRIER) return fail(thread_name(f) + ", a lane of the same warp, waits at __syncthreads (" +
                                             where(f) + ")");
            if (f.op != lead->op || f.wait_line != lead->wait_line || f.mask != lead->mask ||
                f.width != lead->width || std::strcmp(f.wait_file, lead->wait_file.load()) != 0)
                return fail(thread_name(f) + " waits at " + op_names[f.op] + " (" + where(f) + ")");
            if (f.value) ballot |= 1ull << (l - lo);
        }
        const int width = lead->width;
        if (width < 1 || width > 32 || (width & (width - 1)))
            return fail("its width " + std::to_string(width) + " is not a power of 2 up to 32");
        for (size_t l = lo; l < hi; ++l) {
            Fiber& f = fibers[l];
            const int i = int(l - lo), seg = i & ~(width - 1), p = f.param;
            int src = i;
            switch (f.op) {
            case SHFL: src = seg + (((p % width) + width) % width); break;
            case SHFL_UP: src = i - seg < p ? i : i - p; break;
            case SHFL_DOWN: src = i - seg + p >= width ? i : i + p; break;
            case SHFL_XOR: src = (i ^ p) < seg || (i ^ p) >= seg + width ? i : i ^ p; break;
            default: break;
            }
            if (src < 0 || src >= int(lanes))
                return fail(thread_name(f) + " would read lane " + std::to_string(src) +
                            ", which this partial warp does not have (undefined on a GPU)");
            switch (f.op) {
            case BALLOT: f.result = ballot; break;
            case ANY: f.result = ballot != 0; break;
            case ALL: f.result = ballot == present; break;
            case SYNCWARP: f.result = 0; break;
            default: f.result = fibers[lo + size_t(src)].value.load();
            }
        }
        for (size_t l = lo; l < hi; ++l) fibers[l].state = RUNNABLE;
        warp_phase[lo / 32] = warp_phase[lo / 32] + 1;
        progress = 1;
    }
    return progress;
}

inline bool run_block(std::vector<Fiber>& fibers, std::vector<unsigned>& order)
{
    for (size_t i = 0; i < fibers.size(); ++i) {
        Fiber& f = fibers[i];
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = stack(i);
        f.ctx.uc_stack.ss_size = STACK;
        f.ctx.uc_link = &scheduler;
        makecontext(&f.ctx, fiber_entry, 0);
        f.state = RUNNABLE;
    }
    for (const auto& region : shared_regions) std::memset(region.first, 0xFF, region.second);
    phase = 0;
    for (auto& w : warp_phase) w = 0;
    CUDA_EMU_TSAN(__tsan_release(&sync_tokens[2]);)
    for (;;) {
        order_for_phase(order);
        for (unsigned i : order) {
            if (fibers[i].state != RUNNABLE) continue;
            current = &fibers[i];
            CUDA_EMU_TSAN(__tsan_switch_to_fiber(fibers[i].tsan, 1);)
            swapcontext(&scheduler, &fibers[i].ctx);
        }
        current = nullptr;
        const int warps = resolve_warps(fibers);
        if (warps < 0) return false;
        if (warps > 0) continue;             // run the lanes that were waiting for their warp
        const Fiber* waiting = nullptr;
        const Fiber* done = nullptr;
        for (const Fiber& f : fibers) {
            if (f.state == DONE) { if (!done) done = &f; continue; }
            if (!waiting) { waiting = &f; continue; }
            if (f.wait_line != waiting->wait_line || std::strcmp(f.wait_file, waiting->wait_file.load()) != 0) {
                error = block_name() + ": threads wait at different __syncthreads (" + where(*waiting) + " and " +
                        where(f) + "): divergent barrier";
                return false;
            }
        }
        if (!waiting) {
            CUDA_EMU_TSAN(__tsan_acquire(&sync_tokens[3]);)
            return true;
        }
        if (done) {
            error = block_name() + ": thread (" + std::to_string(waiting->tid.x) + ", " +
                    std::to_string(waiting->tid.y) + ", " + std::to_string(waiting->tid.z) +
                    ") waits at __syncthreads (" + where(*waiting) + ") but thread (" + std::to_string(done->tid.x) +
                    ", " + std::to_string(done->tid.y) + ", " + std::to_string(done->tid.z) +
                    ") has exited: not every thread of the block reaches the barrier";
            return false;
        }
        for (Fiber& f : fibers) f.state = RUNNABLE;
        ++barriers_passed;
        phase = phase + 1;
    }
}

inline std::mutex launch_lock;

// A launch that runs longer than `timeout_seconds` (a kernel that never finishes, e.g. spinning on a flag another
// block would set) ends the process with a message: a hung test is worse than a failed one. 0 turns it off.
inline unsigned timeout_seconds = 600;
inline char timeout_message[256];

inline void on_timeout(int)
{
    const ssize_t ignored = write(2, timeout_message, std::strlen(timeout_message));
    (void)ignored;
    _exit(124);
}

struct Watchdog {
    struct sigaction previous {};
    unsigned previous_alarm = 0;
    time_t started = time(nullptr);
    explicit Watchdog(const char* name)
    {
        if (!timeout_seconds) return;
        std::snprintf(timeout_message, sizeof timeout_message,
                      "cuda_emu: kernel %s ran longer than %u s under emulation; stopping the process\n", name,
                      timeout_seconds);
        struct sigaction action {};
        action.sa_handler = on_timeout;
        sigaction(SIGALRM, &action, &previous);
        previous_alarm = alarm(timeout_seconds);
    }
    ~Watchdog()
    {
        if (!timeout_seconds) return;
        alarm(0);
        sigaction(SIGALRM, &previous, nullptr);
        if (previous_alarm) {                // give back what was left of someone else's alarm
            const time_t spent = time(nullptr) - started;
            alarm(spent < time_t(previous_alarm) ? unsigned(previous_alarm - spent) : 1u);
        }
    }
};

inline int run_grid(const char* name, dim3 grid, dim3 block, size_t dynamic_shared)
{
    std::lock_guard<std::mutex> guard(launch_lock);
    error.clear();
    const unsigned long long threads = 1ull * block.x * block.y * block.z;
    auto refuse = [&](const std::string& why) { error = std::string(name) + ": " + why; return 1; };
    if (!grid.x || !grid.y || !grid.z || !block.x || !block.y || !block.z)
        return refuse("a grid or block dimension is 0 (invalid configuration)");
    if (block.x > 1024 || block.y > 1024 || block.z > 64 || threads > 1024)
        return refuse("block (" + std::to_string(block.x) + ", " + std::to_string(block.y) + ", " +
                      std::to_string(block.z) + ") exceeds 1024 threads per block (or 64 in z)");
    if (grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
        return refuse("grid exceeds the limits (x < 2^31, y and z <= 65535)");
    if (dynamic_shared)
        return refuse("dynamic shared memory (shared_mem=" + std::to_string(dynamic_shared) +
                      ") is not emulated");
    if (static_shared_bytes() > 48 * 1024)
        return refuse("the module's __shared__ variables take " + std::to_string(static_shared_bytes()) +
                      " bytes in all, over the 48 KiB a block may have statically (the check is per module)");
    std::vector<Fiber> fibers(threads);
    for (unsigned z = 0, i = 0; z < block.z; ++z)
        for (unsigned y = 0; y < block.y; ++y)
            for (unsigned x = 0; x < block.x; ++x, ++i) fibers[i].tid = {x, y, z};
    std::vector<unsigned> order(threads);
    CUDA_EMU_TSAN(host_fiber = __tsan_get_current_fiber(); for (Fiber& f : fibers) f.tsan = __tsan_create_fiber(0);)
    struct Release {                        // the ThreadSanitizer fibers go with the launch, however it ends
        std::vector<Fiber>& fibers;
        ~Release() { CUDA_EMU_TSAN(for (Fiber& f : fibers) __tsan_destroy_fiber(f.tsan);) }
    } release{fibers};
    block_dim = block;
    grid_dim = grid;
    // Blocks run one after another in a shuffled order (mode 0): i -> (a i + c) mod count with gcd(a, count) = 1,
    // so a kernel that relies on one block running before another is caught too.
    const unsigned long long count = 1ull * grid.x * grid.y * grid.z;
    unsigned long long a = 1, c = 0;
    if (schedule_mode == 0 && count > 1) {
        do a = next_random() % count; while (std::gcd(a, count) != 1);
        c = next_random() % count;
    }
    Watchdog watchdog(name);
    for (unsigned long long i = 0; i < count; ++i) {
        const unsigned long long b = schedule_mode == 2 ? count - 1 - i : (unsigned long long)(((unsigned __int128)a * i + c) % count);
        block_idx = {unsigned(b % grid.x), unsigned(b / grid.x % grid.y), unsigned(b / grid.x / grid.y)};
        if (!run_block(fibers, order)) {
            error = std::string(name) + ": " + error;
            return 1;
        }
    }
    return 0;
}

// The kernel's parameter types as codes the Python side checks its arguments against.
template <class T> constexpr bool unsupported_type = false;
template <class T> constexpr const char* type_code()
{
    if constexpr (std::is_pointer_v<T>) return "p";
    else if constexpr (std::is_same_v<T, int>) return "i4";
    else if constexpr (std::is_same_v<T, unsigned>) return "u4";
    else if constexpr (std::is_same_v<T, long long> || std::is_same_v<T, long>) return "i8";
    else if constexpr (std::is_same_v<T, unsigned long long> || std::is_same_v<T, unsigned long>) return "u8";
    else if constexpr (std::is_same_v<T, float>) return "f4";
    else if constexpr (std::is_same_v<T, double>) return "f8";
    else static_assert(unsupported_type<T>, "cuda_emu: kernel parameter type not supported (pointers, 32/64-bit "
                                            "integers, float and double only)");
}

template <class... A> const char* signature(void (*)(A...))
{
    static const std::string s = [] {
        std::string out;
        ((out += std::string(out.empty() ? "" : ",") + type_code<A>()), ...);
        return out;
    }();
    return s.c_str();
}

template <class... A, size_t... I>
void invoke(void (*kernel)(A...), void** args, std::index_sequence<I...>)
{
    kernel(*static_cast<std::remove_cv_t<A>*>(args[I])...);      // a copy of each argument per thread
}

// args[i] points at the value of parameter i, as in cuLaunchKernel's kernelParams.
template <class... A>
int launch(const char* name, void (*kernel)(A...), unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
           unsigned bz, size_t shared, void** args)
{
    if (current) { error = std::string(name) + ": launched from inside a kernel (not emulated)"; return 1; }
    body = [kernel, args] { invoke(kernel, args, std::index_sequence_for<A...>{}); };
    const int status = run_grid(name, dim3(gx, gy, gz), dim3(bx, by, bz), shared);
    body = nullptr;
    return status;
}

template <class... T> constexpr bool never = false;

}  // namespace cuda_emu

#define threadIdx (static_cast<const uint3&>(::cuda_emu::current->tid))
#define blockIdx (static_cast<const uint3&>(::cuda_emu::block_idx))
#define blockDim (static_cast<const dim3&>(::cuda_emu::block_dim))
#define gridDim (static_cast<const dim3&>(::cuda_emu::grid_dim))
#define __syncthreads() ::cuda_emu::syncthreads(__FILE__, __LINE__)
// Warp collectives: every lane of the warp must take part (mask covering the warp; lanes past blockDim excepted).
#define __syncwarp(...) ::cuda_emu::syncwarp(__FILE__, __LINE__ __VA_OPT__(,) __VA_ARGS__)
#define __shfl_sync(...) ::cuda_emu::shuffle(::cuda_emu::SHFL, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) ::cuda_emu::shuffle(::cuda_emu::SHFL_UP, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) ::cuda_emu::shuffle(::cuda_emu::SHFL_DOWN, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(...) ::cuda_emu::shuffle(::cuda_emu::SHFL_XOR, __FILE__, __LINE__, __VA_ARGS__)
#define __ballot_sync(mask, pred) \
    unsigned(::cuda_emu::warp_collective(::cuda_emu::BALLOT, __FILE__, __LINE__, mask, (pred) ? 1u : 0u))
#define __any_sync(mask, pred) int(::cuda_emu::warp_collective(::cuda_emu::ANY, __FILE__, __LINE__, mask, (pred) ? 1u : 0u))
#define __all_sync(mask, pred) int(::cuda_emu::warp_collective(::cuda_emu::ALL, __FILE__, __LINE__, mask, (pred) ? 1u : 0u))

// ---- device functions the kernels use
__device__ inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned((1ull * a * b) >> 32); }
__device__ inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b)
{
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
// Round-to-nearest double operations, never contracted into an FMA (the module is built with -ffp-contract=off).
__device__ inline double __dmul_rn(double a, double b) { return a * b; }
__device__ inline double __dadd_rn(double a, double b) { return a + b; }
__device__ inline float __fmul_rn(float a, float b) { return a * b; }
__device__ inline float __fadd_rn(float a, float b) { return a + b; }
template <class T> __device__ inline T __ldg(const T* p) { return *p; }
__device__ inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
__device__ inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <class T> __device__ inline std::atomic_ref<T> cuda_emu_atomic(T* p)
{
    if (reinterpret_cast<uintptr_t>(p) % std::atomic_ref<T>::required_alignment) {
        std::fprintf(stderr, "cuda_emu: misaligned atomic at %p\n", static_cast<void*>(p));
        std::abort();
    }
    return std::atomic_ref<T>(*p);
}
// CUDA's atomics are relaxed: they order nothing else (so a race checker must not treat them as synchronisation).
constexpr auto relaxed = std::memory_order_relaxed;
template <class T> __device__ inline T atomicAdd(T* p, T v) { return cuda_emu_atomic(p).fetch_add(v, relaxed); }
template <class T> __device__ inline T atomicSub(T* p, T v) { return cuda_emu_atomic(p).fetch_sub(v, relaxed); }
template <class T> __device__ inline T atomicExch(T* p, T v) { return cuda_emu_atomic(p).exchange(v, relaxed); }
template <class T> __device__ inline T atomicCAS(T* p, T expected, T desired)
{
    cuda_emu_atomic(p).compare_exchange_strong(expected, desired, relaxed);
    return expected;
}
template <class T> __device__ inline T atomicMax(T* p, T v)
{
    T old = cuda_emu_atomic(p).load(relaxed);
    while (old < v && !cuda_emu_atomic(p).compare_exchange_weak(old, v, relaxed)) {}
    return old;
}
template <class T> __device__ inline T atomicMin(T* p, T v)
{
    T old = cuda_emu_atomic(p).load(relaxed);
    while (v < old && !cuda_emu_atomic(p).compare_exchange_weak(old, v, relaxed)) {}
    return old;
}

// ---- what is deliberately not emulated: using it is a compile error that names it
#define CUDA_EMU_REFUSE(fn)                                                                                   \
    template <class... T> inline int fn(T...)                                                                 \
    {                                                                                                         \
        static_assert(::cuda_emu::never<T...>, "cuda_emu: " #fn " is not emulated (fastvae/cuda/emu/cuda_emu.h)"); \
        return 0;                                                                                             \
    }
CUDA_EMU_REFUSE(__activemask)
CUDA_EMU_REFUSE(__syncthreads_count)
CUDA_EMU_REFUSE(__syncthreads_and)
CUDA_EMU_REFUSE(__syncthreads_or)
CUDA_EMU_REFUSE(__expf)
CUDA_EMU_REFUSE(__logf)
CUDA_EMU_REFUSE(__sinf)
CUDA_EMU_REFUSE(__cosf)
CUDA_EMU_REFUSE(__fdividef)
CUDA_EMU_REFUSE(clock64)
#undef CUDA_EMU_REFUSE
