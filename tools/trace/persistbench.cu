/* persistbench.cu — how fast a persistent decode kernel could stream a 27B
 * step's weights (a diagnostic, `make persistbench`; not part of `all` or
 * `check`).
 *
 * The engine runs a decode step as ~370 dependent launches; each dependency
 * costs 1.5-1.9 us however it is expressed (depbench.cu), and each launch
 * ramps up and drains. A persistent kernel would keep one block per SM for
 * the whole step and put a grid barrier where a launch boundary is now. It
 * can only win if the weight stream does not stop at the barriers: the
 * weights never depend on the barrier, only their use does. This kernel
 * measures that ceiling on the real op sequence of a 27B INT4 step:
 *
 *   - one block per SM: warp 0's lane 0 is the producer, the other C warps
 *     the consumers;
 *   - each op's weights are laid out per SM (block b's share of op i is one
 *     contiguous region), as a persistent kernel's repacking could lay them
 *     out, and the producer streams every op's share into a ring of NS slots
 *     of SLOT bytes (cp.async.bulk on full/empty mbarriers) without ever
 *     waiting for a barrier, only for a free slot;
 *   - the consumers wait, before each op, until every block has finished the
 *     op before (a counter: __threadfence + atomicAdd after, ld.acquire
 *     polling before), then decode the op's slots from shared memory with
 *     the engine's own INT4 tensor-core body (qg_int4_mma_dot, as the
 *     streamed GEMV runs it on a 2176-byte stage: 4 rows x 512 bytes of
 *     codes + their scale words; x from shared memory), or only XOR the
 *     words (decode 0), and free them;
 *   - the small ops (GDN step, attention) are a spin of the given ns on
 *     every block between two barriers.
 *
 * Modes: barrier 1 (as above); 0 (no waits: the stream alone, the floor);
 * 2: every op its own launch of the same kernel (one block per SM), PDL
 * launches in a CUDA graph, the producer streaming before the
 * griddepcontrol.wait that the consumers pass before they decode — the
 * engine's launch-per-projection schedule with this kernel's stream. Prints ms per step, GB/s and % of the device-to-device copy rate.
 * Parts 2 and 3 (below) time one GEMV launch alone; `persistbench 3` runs
 * part 3 against part 2's engine schedule only; part 4 (`persistbench 4`)
 * times the step's GEMVs as a PDL chain under part 2's schedule with real
 * row sums and under shared-slot schedules; part 5 (`persistbench 5`) runs
 * part 2's shapes and part 4's chain on the tiled layout and on the same
 * units interleaved by warp (k_ring layout 3).
 * Results: BENCHMARKS.md, twenty-second to twenty-seventh sessions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemv_q.cuh"

#define STAGE 2176 /* one streamed-GEMV stage: QK_QROWS rows x 512 code bytes + 4 x 32 scale bytes */

#define MAX_OPS 400

struct op_table {
    int n;
    long long per_block[MAX_OPS]; /* bytes each block streams (0: a small op) */
    long long base[MAX_OPS];      /* offset of block 0's share in the pool */
    int spin_ns[MAX_OPS];
};
__constant__ op_table c_ops;

/* (common.cuh's qk_mbar_init counts one arrival; the empty barriers count C) */
__device__ __forceinline__ void mbar_init(uint64_t *b, unsigned count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(qk_smem_addr(b)), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint64_t *b)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(qk_smem_addr(b)) : "memory");
}

__device__ __forceinline__ unsigned ld_acquire(const unsigned *p)
{
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

/* One 2176-byte stage decoded as qt_dot<false, 4> does (the engine's INT4
 * tensor-core body); x from the block's 16 KB copy, read lane-contiguous
 * (no bank conflicts) from position xc on, which then moves on. */
__device__ __forceinline__ void stage_dot(const uint8_t *stg, const uint4 *xs, int lane, int &xc, float *acc,
                                          const uint8_t *scales = NULL)
{
    const uint4 *w = (const uint4 *)stg;
    const uint32_t *sw = (const uint32_t *)(scales ? scales : stg + QK_QROWS * 512);
    uint32_t wd[QK_QROWS][4], m[QK_QROWS][1], xv[16];
#pragma unroll
    for (int r = 0; r < QK_QROWS; r++) {
        const uint4 u = w[r * 32 + lane];
        wd[r][0] = u.x;
        wd[r][1] = u.y;
        wd[r][2] = u.z;
        wd[r][3] = u.w;
        m[r][0] = (sw[r * 8 + (lane >> 2)] & 0x00ff7fffu) | 0x00083c00u; /* a sane scale, z 8 */
    }
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const uint4 u = xs[(xc + 32 * j) & 1023];
        xv[4 * j + 0] = u.x;
        xv[4 * j + 1] = u.y;
        xv[4 * j + 2] = u.z;
        xv[4 * j + 3] = u.w;
    }
    xc += 128;
    qg_int4_mma_dot<false, 4>(wd, m, xv, acc);
}

/* The 4 row sums of a warp's mma accumulators (only the diagonal lanes hold
 * sums, as in the engine's qg_walk_mma), in 6 shuffles: row r to lane 8 r. */
__device__ __forceinline__ float rows4_total(float *acc, int lane)
{
    if ((lane & 3) != (lane >> 3))
        for (int r = 0; r < QK_QROWS; r++) acc[r] = 0.0f;
    const bool h16 = lane & 16, h8 = lane & 8;
    float k0 = h16 ? acc[2] : acc[0], k1 = h16 ? acc[3] : acc[1];
    k0 += __shfl_xor_sync(0xffffffffu, h16 ? acc[0] : acc[2], 16);
    k1 += __shfl_xor_sync(0xffffffffu, h16 ? acc[1] : acc[3], 16);
    float t = h8 ? k1 : k0;
    t += __shfl_xor_sync(0xffffffffu, h8 ? k0 : k1, 8);
    t += __shfl_xor_sync(0xffffffffu, t, 4);
    t += __shfl_xor_sync(0xffffffffu, t, 2);
    t += __shfl_xor_sync(0xffffffffu, t, 1);
    for (int r = 0; r < QK_QROWS; r++) acc[r] = 0.0f;
    return t;
}

/* The consumers' barrier (named barrier 1; warp 0, the producer, is not in it). */
__device__ __forceinline__ void consumers_sync(int nthreads)
{
    asm volatile("bar.sync 1, %0;" ::"r"(nthreads) : "memory");
}

/* The kernels' x: 8192 bf16 in shared memory, made up (the decode's reads
 * wrap around it). */
__device__ __forceinline__ void xs_fill(uint4 *xs)
{
    for (int i = (int)threadIdx.x; i < 1024; i += (int)blockDim.x)
        xs[i] = make_uint4(0x3f803f80u ^ i, 0x3f00bf00u, 0x3f80bf80u ^ (i << 3), 0x3e803e80u);
}

/* After a warp has put its part of a row group in shared memory: true in
 * every lane of the warp whose part completes the group (counter *left,
 * which that warp resets once it has added the parts). */
__device__ __forceinline__ bool group_last(int *left, int lane)
{
    __syncwarp();
    __threadfence_block();
    int last = 0;
    if (lane == 0) last = atomicSub(left, 1) == 1;
    last = __shfl_sync(0xffffffffu, last, 0);
    if (last) __threadfence_block();
    return last != 0;
}

/* The slot kernels' barriers: NS full ones (one arrival: the producer's
 * expect) and NS empty ones (C arrivals: every consumer warp), then the
 * block barrier. */
__device__ __forceinline__ void slots_init(uint64_t *full, uint64_t *empty, int NS, int C)
{
    if (threadIdx.x == 0) {
        for (int i = 0; i < NS; i++) {
            mbar_init(full + i, 1);
            mbar_init(empty + i, (unsigned)C);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
}

__global__ void __launch_bounds__(512, 1) k_persist(const uint8_t *__restrict__ pool, unsigned *done, float *out, int NS, int SLOT, int C,
                          int decode, int barrier, int op0, int op1, int pdl)
{
    if (pdl) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    extern __shared__ __align__(128) uint8_t ring[];
    __shared__ __align__(8) uint64_t full[64], empty[64];
    __shared__ uint4 xs[1024]; /* x: 8192 bf16 (the decode's reads wrap around it) */
    xs_fill(xs);
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31, B = (int)gridDim.x;
    slots_init(full, empty, NS, C);
    if (warp == 0) { /* the producer: every op's share, in order, never waiting for a barrier */
        if (lane != 0) return;
        long long k = 0;
        for (int i = op0; i < op1; i++) {
            const long long len = c_ops.per_block[i];
            const uint8_t *src = pool + c_ops.base[i] + (long long)blockIdx.x * len;
            for (long long o = 0; o < len; o += SLOT, k++) {
                const int s = (int)(k % NS);
                const uint32_t n = (uint32_t)(len - o < SLOT ? len - o : SLOT);
                qk_mbar_wait(empty + s, (uint32_t)((k / NS) & 1) ^ 1u);
                qk_mbar_expect(full + s, n);
                qk_bulk_copy(ring + (size_t)s * SLOT, src + o, n, full + s);
            }
        }
        return;
    }
    const int ct = (int)threadIdx.x - 32, nct = 32 * C, cw = ct >> 5;
    float acc[QK_QROWS] = {0.f, 0.f, 0.f, 0.f};
    uint32_t x = 0;
    long long k = 0;
    int xc = lane;
    if (pdl) asm volatile("griddepcontrol.wait;" ::: "memory"); /* the launch before has ended */
    for (int i = op0; i < op1; i++) {
        if (barrier && i > 0) { /* every block has finished op i - 1 */
            if (ct == 0)
                while (ld_acquire(done) < (unsigned)(i * B)) {
                }
            consumers_sync(nct);
        }
        const long long len = c_ops.per_block[i];
        if (len == 0) { /* a small op: every block busy for spin_ns */
            const unsigned long long t0 = qk_globaltimer();
            while (qk_globaltimer() - t0 < (unsigned long long)c_ops.spin_ns[i]) {
            }
        }
        for (long long o = 0; o < len; o += SLOT, k++) {
            const int s = (int)(k % NS);
            const int n = (int)(len - o < SLOT ? len - o : SLOT);
            qk_mbar_wait(full + s, (uint32_t)((k / NS) & 1));
            const uint8_t *slot = ring + (size_t)s * SLOT;
            if (decode) { /* stages cw, cw + C, ... of the slot, as qt_dot<false, 4> takes one */
                for (int g = cw; g < n / STAGE; g += C) {
                    stage_dot(slot + (size_t)g * STAGE, xs, lane, xc, acc);
                }
            } else {
                const uint4 *v = (const uint4 *)slot;
                for (int j = ct; j < n / 16; j += nct) {
                    const uint4 u = v[j];
                    x ^= u.x ^ u.y ^ u.z ^ u.w;
                }
            }
            __syncwarp();
            if (lane == 0) mbar_arrive(empty + s);
        }
        if (barrier) {
            consumers_sync(nct);
            if (ct == 0) {
                __threadfence();
                atomicAdd(done, 1u);
            }
        }
    }
    if (x == 0x12345678u || acc[0] + acc[1] + acc[2] + acc[3] == 1.2345f) out[blockIdx.x] = 1.0f; /* keeps the work */
}

#define CK(x)                                                                                  \
    do {                                                                                       \
        cudaError_t e_ = (x);                                                                  \
        if (e_ != cudaSuccess) {                                                               \
            fprintf(stderr, "persistbench: %s: %s\n", #x, cudaGetErrorString(e_));              \
            return 1;                                                                          \
        }                                                                                      \
    } while (0)

/* The ops of a 27B INT4 g128 decode step (bytes with the 4-byte scale word
 * per row and 128 codes; layers 4i + 3 full attention, the rest GDN):
 * in-projection (GDN: qkv|z INT4 + a|b BF16), GDN step or attention, out,
 * gate|up, down (the SwiGLU in down's start), then the BF16 lm_head. */
static long long int4_bytes(long long n, long long k) { return n * k / 2 + n * (k / 128) * 4; }

static void ops_27b_int4(op_table *t, int B, int gdn_ns, int attn_ns, int head, long long *total)
{
    const long long D = 5120, I = 17408;
    long long base = 0;
    t->n = 0;
    *total = 0;
    for (int l = 0; l < 64; l++) {
        const int full = l % 4 == 3;
        long long w[5];
        w[0] = full ? int4_bytes(14336, D) : int4_bytes(16384, D) + 96 * D * 2;
        w[1] = 0;
        w[2] = int4_bytes(D, 6144);
        w[3] = int4_bytes(2 * I, D);
        w[4] = int4_bytes(D, I);
        for (int j = 0; j < 5; j++) {
            const long long per = (w[j] / B + STAGE - 1) / STAGE * STAGE;
            t->per_block[t->n] = per;
            t->base[t->n] = base;
            t->spin_ns[t->n] = j == 1 ? (full ? attn_ns : gdn_ns) : 0;
            t->n++;
            base += per * B;
            *total += per * B;
        }
    }
    if (head) {
        const long long per = (248320LL * D * 2 / B + STAGE - 1) / STAGE * STAGE;
        t->per_block[t->n] = per;
        t->base[t->n] = base;
        t->spin_ns[t->n] = 0;
        t->n++;
        *total += per * B;
    }
}


/* Part 2: one GEMV launch alone, the streamed INT4 kernel's schedule (two
 * blocks of 8 warps per SM, a block's row groups one contiguous range, its
 * steps split evenly over its warps, each warp a ring of D stages), with
 * the stage's bytes from
 *   layout 0: the engine's row-major layout (4 x 512 bytes of codes at the
 *             row stride + 4 x 32 bytes of scale words: 8 copies), or
 *   layout 1: a stage-major layout (the stage's 2176 bytes contiguous, a
 *             warp's steps one after another: 1 copy),
 *   layout 2: the engine's tiled INT4 layout (quant.h: the stage's 2048
 *             bytes of codes contiguous, its 128 bytes of scales likewise
 *             in a region of their own: 2 copies),
 *   layout 3: layout 2 with the block's units interleaved by warp (warp
 *             v's j-th unit stored at unit j * 8 + v of the block's range,
 *             the extra units of the warps that have one more at its end),
 *             so the 8 warps' current stages lie in one window of the
 *             block's range instead of 8 streams 1/8 of it apart: does
 *             HBM reward fewer, wider streams (session 27)?
 * asked for by
 *   producer 0: lane 0 of each warp (as k_gemv_qt), or
 *   producer 1: one extra warp per block for all 8 rings,
 * spc steps per copy (a stage of spc x 2176 bytes, layouts 1 and 2;
 * producer 0). The decoding is the INT4 body on each step; GB/s over 20
 * launches. Part 4 runs it with pdl (the first D stages asked for before
 * griddepcontrol.wait) and row sums (spc 1): sums 0 none (timing only),
 * 1 a row group's 4 sums (rows4_total) stored at its end before the
 * stage's refill, 2 after it (the engine's order), 3 as 2 without the
 * stores, 4 the diagonal lanes' partial sums parked in shared memory and
 * added at the kernel's end, 5 two accumulator sets by row-group parity,
 * a group summed one step after its last mma. Results: BENCHMARKS.md,
 * twenty-second, twenty-third, twenty-fifth and twenty-sixth sessions. */
#define PARK 16 /* k_ring sums 4: row groups parked per warp */

__global__ void __launch_bounds__(288, 2) k_ring(const uint8_t *__restrict__ w, const uint8_t *__restrict__ sc,
                                                 float *out, int G, int nu, int D, int layout, int producer, int spc,
                                                 int pdl = 0, int sums = 0)
{
    if (pdl) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    extern __shared__ __align__(128) uint8_t ring[];
    __shared__ __align__(8) uint64_t full[8 * 8], empty[8 * 8];
    __shared__ uint4 xs[1024];
    __shared__ float4 park[8][PARK][4]; /* sums 4 */
    __shared__ int pgs[8][PARK];
    xs_fill(xs);
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31, b = (int)blockIdx.x, B = (int)gridDim.x;
    const long long A = (long long)b * G / B * nu, n = (long long)(b + 1) * G / B * nu - A;
    const long long kc = (long long)nu * 32, rowb = kc * 16, srow = kc * 4 / 4; /* g128: a scale word per 4 chunks */
    if (threadIdx.x == 0) {
        for (int i = 0; i < 8 * D; i++) {
            mbar_init(full + i, 1);
            mbar_init(empty + i, 1);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    auto issue = [&](long long u, uint8_t *dst, uint64_t *bar, int cnt) { /* cnt steps from u (layouts 1, 2) */
        qk_mbar_expect(bar, cnt * STAGE);
        if (layout == 1) {
            qk_bulk_copy(dst, w + u * STAGE, cnt * STAGE, bar);
            return;
        }
        if (layout == 2) { /* the engine's tiled layout: codes and scales each one piece */
            qk_bulk_copy(dst, w + u * 2048, cnt * 2048, bar);
            qk_bulk_copy(dst + cnt * 2048, sc + u * 128, cnt * (STAGE - 2048), bar);
            return;
        }
        if (layout == 3) { /* interleaved by warp (spc 1, producer 0) */
            const int v = (int)threadIdx.x >> 5;
            const long long av = A + v * n / 8, j = u - av, m = n / 8;
            long long at = A + j * 8 + v;
            if (j >= m) { /* the extra unit: after the block's 8 m, in warp order */
                at = A + 8 * m;
                for (int x = 0; x < v; x++) at += (A + (x + 1) * n / 8) - (A + x * n / 8) > m;
            }
            qk_bulk_copy(dst, w + at * 2048, 2048, bar);
            qk_bulk_copy(dst + 2048, sc + at * 128, STAGE - 2048, bar);
            return;
        }
        const long long g = u / nu, c = u - g * nu;
        for (int r = 0; r < 4; r++) {
            qk_bulk_copy(dst + r * 512, w + (4 * g + r) * rowb + c * 512, 512, bar);
            qk_bulk_copy(dst + 2048 + r * 32, sc + (4 * g + r) * srow + c * 32, 32, bar);
        }
    };
    if (warp == 8) { /* producer 1: all 8 rings, step by step */
        if (lane != 0) return;
        long long most = 0;
        for (int v = 0; v < 8; v++) {
            const long long m = A + (v + 1) * n / 8 - (A + v * n / 8);
            most = m > most ? m : most;
        }
        for (long long k = 0; k < most; k++)
            for (int v = 0; v < 8; v++) {
                const long long a = A + v * n / 8, e = A + (v + 1) * n / 8;
                if (a + k >= e) continue;
                const int s = (int)(k % D);
                qk_mbar_wait(empty + v * D + s, (uint32_t)((k / D) & 1) ^ 1u);
                issue(a + k, ring + (size_t)(v * D + s) * STAGE, full + v * D + s, 1);
            }
        return;
    }
    /* stage k of the warp: spc steps of its contiguous eighth of the block's
     * steps from a + k spc (one copy, or two with layout 2; fewer at its end) */
    const long long a = A + warp * n / 8, e = A + (warp + 1) * n / 8;
    const size_t SS = (size_t)spc * STAGE;
    auto count = [&](long long k) -> int {
        const long long u = a + k * spc;
        return u >= e ? 0 : (int)(e - u < spc ? e - u : spc);
    };
    if (producer == 0 && lane == 0)
        for (long long k = 0; k < D && count(k) > 0; k++)
            issue(a + k * spc, ring + (size_t)(warp * D + k) * SS, full + warp * D + k, count(k));
    __syncwarp();
    if (pdl) asm volatile("griddepcontrol.wait;" ::: "memory");
    float acc[QK_QROWS] = {0.f, 0.f, 0.f, 0.f};
    int xc = lane;
    long long gend = (a / nu + 1) * nu;
    int npark = 0; /* sums 4 */
    float accb[QK_QROWS] = {0.f, 0.f, 0.f, 0.f}; /* sums 5 */
    int pend = -1;
    bool par = false;
    int *pg = pgs[warp];
    for (long long k = 0; count(k) > 0; k++) {
        const int s = (int)(k % D);
        uint8_t *stg = ring + (size_t)(warp * D + s) * SS;
        qk_mbar_wait(full + warp * D + s, (uint32_t)((k / D) & 1));
        if (sums == 5 && par) /* sums 5: a second accumulator set for every other row group */
            stage_dot(stg, xs, lane, xc, accb);
        else
            for (int i = 0; i < count(k); i++) stage_dot(stg + (size_t)i * STAGE, xs, lane, xc, acc);
        const long long u = a + k * spc + count(k); /* the next step */
        /* a row group's piece ends: its 4 row sums out (spc 1); the group's
         * end kept as a running bound (a 64-bit u % nu per step, as a first
         * version had it, cost ~3 points of copy bandwidth) */
        const bool ends = sums && (u == gend || u == e);
        if (u == gend) gend += nu;
        if (ends && sums == 1) { /* sums 1: before the stage's refill; 2: after it, as the engine does */
            const float t = rows4_total(acc, lane);
            if ((lane & 7) == 0) out[((u - 1) / nu) * QK_QROWS + (lane >> 3)] = t;
        }
        __syncwarp();
        if (lane == 0) {
            if (producer == 0) {
                if (count(k + D) > 0) issue(a + (k + D) * spc, stg, full + warp * D + s, count(k + D));
            } else {
                mbar_arrive(empty + warp * D + s);
            }
        }
        if (ends && sums == 4) { /* 4: the diagonal lanes park their sums, added at the end (below) */
            if (npark < PARK && (lane & 3) == (lane >> 3)) {
                park[warp][npark][lane >> 3] = make_float4(acc[0], acc[1], acc[2], acc[3]);
            }
            if (npark < PARK) {
                if (lane == 0) pg[npark] = (int)((u - 1) / nu);
                npark++;
                for (int r = 0; r < QK_QROWS; r++) acc[r] = 0.0f;
            } else { /* no room: at once */
                const float t = rows4_total(acc, lane);
                if ((lane & 7) == 0) out[((u - 1) / nu) * QK_QROWS + (lane >> 3)] = t;
            }
        }
        if (sums == 5) { /* the group before, summed one step after its last mma (its chain has drained) */
            if (pend >= 0) {
                const float t = par ? rows4_total(acc, lane) : rows4_total(accb, lane);
                if ((lane & 7) == 0) out[(size_t)pend * QK_QROWS + (lane >> 3)] = t;
                pend = -1;
            }
            if (ends) {
                pend = (int)((u - 1) / nu);
                par = !par;
            }
        }
        if (ends && sums >= 2 && sums <= 3) { /* (3: the sums without their stores, timing only) */
            const float t = rows4_total(acc, lane);
            if ((lane & 7) == 0 && (sums == 2 || t == 1.2345f)) out[((u - 1) / nu) * QK_QROWS + (lane >> 3)] = t;
        }
    }
    if (pend >= 0) {
        const float t = par ? rows4_total(acc, lane) : rows4_total(accb, lane);
        if ((lane & 7) == 0) out[(size_t)pend * QK_QROWS + (lane >> 3)] = t;
    }
    __syncwarp();
    if (lane < QK_QROWS) /* sums 4: row lane of each parked group, its 4 diagonal lanes' parts in order */
        for (int i = 0; i < npark; i++) {
            const float *p0 = (const float *)&park[warp][i][0];
            out[(size_t)pg[i] * QK_QROWS + lane] = (p0[lane] + p0[4 + lane]) + (p0[8 + lane] + p0[12 + lane]);
        }
    if (acc[0] + acc[1] + acc[2] + acc[3] + accb[0] == 1.2345f) out[blockIdx.x] = 1.0f;
}

/* GB/s of `bytes` read by each of 20 launches (launch(r) issues launch r,
 * a fresh region each: nothing from L2), best of 3 rounds; -1 on an error. */
template <class F>
static double time_launches(cudaStream_t st, const char *name, size_t bytes, F launch)
{
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    const int reps = 20;
    float best = 1e30f;
    for (int round = 0; round < 3; round++) {
        cudaEventRecord(e0, st);
        for (int r = 0; r < reps; r++) launch(r);
        cudaEventRecord(e1, st);
        if (cudaEventSynchronize(e1) != cudaSuccess) {
            fprintf(stderr, "persistbench: %s: %s\n", name, cudaGetErrorString(cudaGetLastError()));
            best = -1.0f;
            break;
        }
        float ms = 0;
        cudaEventElapsedTime(&ms, e0, e1);
        if (ms < best) best = ms;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return best < 0 ? -1.0 : (double)bytes * reps / (best * 1e6);
}

/* GB/s of one N x K INT4 g128 GEMV shape under k_ring; -1 on an error. */
static double time_ring(cudaStream_t st, const uint8_t *pool, float *out, int nsm, int N, int K, int D, int layout,
                        int producer, int spc)
{
    const int G = N / 4, nu = K / 1024;
    const size_t wbytes = (size_t)N * K / 2, sbytes = (size_t)N * (K / 128) * 4;
    const size_t smem = (size_t)8 * D * spc * STAGE;
    if (cudaFuncSetAttribute(k_ring, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess) return -1;
    const int threads = producer ? 288 : 256;
    return time_launches(st, "k_ring", wbytes + sbytes, [&](int r) {
        const uint8_t *w = pool + (size_t)(r % 8) * (wbytes + sbytes + 4096);
        k_ring<<<2 * nsm, threads, smem, st>>>(w, w + wbytes, out, G, nu, D, layout, producer, spc);
    });
}

/* Part 3: one GEMV launch alone, nb blocks per SM of C + 1 warps: warp 0's
 * lane 0 streams the block's row groups into a ring of NS slots (a slot: up
 * to R row groups' stages at one walk step, codes then scales, each one
 * contiguous copy), consumer warp w decodes row group w of each slot, so a
 * warp sums one row group over its nu slots and stores its rows with no
 * cross-warp reduction. The layout this needs ("batched"): row groups in
 * batches of R, a batch stored step-major (its nr <= R row groups' step u
 * contiguous, then step u + 1), codes and scales in regions of their own. */
__global__ void __launch_bounds__(512, 1) k_batch(const uint8_t *__restrict__ w, const uint8_t *__restrict__ sc,
                                                  float *out, int G, int nu, int NS, int R)
{
    extern __shared__ __align__(128) uint8_t ring[];
    __shared__ __align__(8) uint64_t full[16], empty[16];
    __shared__ uint4 xs[1024];
    const int C = (int)blockDim.x / 32 - 1;
    xs_fill(xs);
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31, b = (int)blockIdx.x, B = (int)gridDim.x;
    const int g0 = (int)((long long)b * G / B), g1 = (int)((long long)(b + 1) * G / B);
    const size_t SLOT = (size_t)R * STAGE;
    slots_init(full, empty, NS, C);
    long long k = 0;
    if (warp == 0) {
        if (lane != 0) return;
        for (int j = g0 / R; j * R < g1; j++) {
            const int nr = G - j * R < R ? G - j * R : R, i0 = g0 > j * R ? g0 - j * R : 0;
            const int i1 = g1 - j * R < nr ? g1 - j * R : nr;
            const long long base = (long long)j * R * nu;
            for (int u = 0; u < nu; u++, k++) {
                const int s = (int)(k % NS);
                uint8_t *dst = ring + (size_t)s * SLOT;
                qk_mbar_wait(empty + s, (uint32_t)((k / NS) & 1) ^ 1u);
                qk_mbar_expect(full + s, (uint32_t)((i1 - i0) * STAGE));
                qk_bulk_copy(dst, w + (base + (long long)u * nr + i0) * 2048, (i1 - i0) * 2048, full + s);
                qk_bulk_copy(dst + (size_t)R * 2048, sc + (base + (long long)u * nr + i0) * 128, (i1 - i0) * 128, full + s);
            }
        }
        return;
    }
    const int cw = warp - 1;
    float acc[QK_QROWS] = {0.f, 0.f, 0.f, 0.f};
    int xc = lane;
    for (int j = g0 / R; j * R < g1; j++) {
        const int nr = G - j * R < R ? G - j * R : R, i0 = g0 > j * R ? g0 - j * R : 0;
        const int i1 = g1 - j * R < nr ? g1 - j * R : nr;
        const bool mine = cw < i1 - i0;
        for (int u = 0; u < nu; u++, k++) {
            const int s = (int)(k % NS);
            const uint8_t *slot = ring + (size_t)s * SLOT;
            qk_mbar_wait(full + s, (uint32_t)((k / NS) & 1));
            if (mine) stage_dot(slot + (size_t)cw * 2048, xs, lane, xc, acc, slot + (size_t)R * 2048 + cw * 128);
            __syncwarp();
            if (lane == 0) mbar_arrive(empty + s);
        }
        if (mine) {
            if ((lane & 3) != (lane >> 3))
                for (int r = 0; r < QK_QROWS; r++) acc[r] = 0.0f;
            float t = 0.0f;
            for (int r = 0; r < QK_QROWS; r++) {
                const float v = qk_warp_sum(acc[r]);
                if (lane == r) t = v;
                acc[r] = 0.0f;
            }
            if (lane < QK_QROWS) out[(size_t)(j * R + i0 + cw) * QK_QROWS + lane] = t;
        }
    }
}

/* GB/s of one N x K INT4 g128 GEMV shape under k_batch; -1 on an error. */
static double time_batch(cudaStream_t st, const uint8_t *pool, float *out, int nsm, int N, int K, int NS, int R,
                         int nb)
{
    const int G = N / 4, nu = K / 1024;
    const size_t wbytes = (size_t)N * K / 2, sbytes = (size_t)N * (K / 128) * 4;
    const size_t smem = (size_t)NS * R * STAGE;
    if (cudaFuncSetAttribute(k_batch, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess) return -1;
    return time_launches(st, "k_batch", wbytes + sbytes, [&](int r) {
        const uint8_t *w = pool + (size_t)(r % 8) * (wbytes + sbytes + 4096);
        k_batch<<<nb * nsm, 32 * (R + 1), smem, st>>>(w, w + wbytes, out, G, nu, NS, R);
    });
}

/* Part 4 (`persistbench 4`): the 256 GEMVs of a 27B INT4 g128 step as a
 * chain of PDL launches in one CUDA graph (as the engine runs them; no
 * lm_head, no small ops), ms per step and % of copy, under
 *   k_ring (part 2, the engine's schedule: 2 blocks x 8 warps per SM, a
 *   2-stage ring per warp, each warp a contiguous range of steps; its
 *   sums modes above);
 *   k_persist's mode 2 (part 1: a per-SM share of each op, one producer
 *   lane, 15 consumer warps taking a slot's stages in turn; no sums);
 *   k_flow and k_own (below), which keep k_persist's shared slots but add
 *   real row sums;
 * then k_flow (consumers finishing) launches alone, one per shape.
 * k_flow: nb blocks per SM of C + 1 warps; lane 0 of warp 0 streams the
 * block's whole range of steps (the tiled layout keeps it contiguous: codes
 * and scales each one region) into NS slots of S stages, starting before
 * the PDL wait; consumer warp w decodes stages w, w + C, ... of each slot,
 * sums each stage's 4 rows at once (rows4_total) into a ring of partials in
 * shared memory, and frees the slot. Mode 0: the producer, whenever it
 * waits for a free slot, adds up (in step order) the partials of the row
 * groups whose stages have all been freed and stores their rows; mode 1:
 * the consumer warp that completes a row group's last stage (a shared
 * counter) does. The sums are of the tool's synthetic x (timing, not a
 * GEMV to check). Results: BENCHMARKS.md, twenty-fifth and twenty-sixth
 * sessions. */
#define FLOW_PR 512 /* the partials ring: >= NS S + 2 S + nu stages */
#define FLOW_GR 128 /* row-group counters (mode 1) */

/* The shared-slot kernels' common parts. Block b of B takes the row
 * groups [b G / B, (b + 1) G / B): its steps are [A, A + n) of the tiled
 * layout (nu per row group). */
struct slot_plan {
    int g0, nslots;
    long long A, n;
};

__device__ __forceinline__ slot_plan slots_plan(int G, int nu, int S)
{
    const int b = (int)blockIdx.x, B = (int)gridDim.x;
    slot_plan p;
    p.g0 = (int)((long long)b * G / B);
    const int g1 = (int)((long long)(b + 1) * G / B);
    p.A = (long long)p.g0 * nu;
    p.n = (long long)(g1 - p.g0) * nu;
    p.nslots = (int)((p.n + S - 1) / S);
    return p;
}

/* The shared-slot kernels' prologue, after their own shared counters are
 * set: the PDL trigger, x, the block's plan and the slots' barriers (the
 * block barrier among them). */
__device__ __forceinline__ slot_plan slots_begin(uint4 *xs, uint64_t *full, uint64_t *empty, int G, int nu, int NS,
                                                 int S, int C, int pdl)
{
    if (pdl) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    xs_fill(xs);
    const slot_plan pl = slots_plan(G, nu, S);
    slots_init(full, empty, NS, C);
    return pl;
}

/* The producer lane: slot k gets steps A + k S on (codes then scales, each
 * from its own region; whole: one region of whole stages), once the slot is
 * free; freed(k) runs after that wait, before the copies. */
template <class F>
__device__ __forceinline__ void slots_produce(const uint8_t *w, const uint8_t *sc, uint8_t *ring, uint64_t *full,
                                              uint64_t *empty, const slot_plan &p, int NS, int S, bool whole,
                                              F freed)
{
    for (int k = 0; k < p.nslots; k++) {
        const int s = k % NS;
        const long long u = p.A + (long long)k * S, cnt = p.n - (long long)k * S < S ? p.n - (long long)k * S : S;
        qk_mbar_wait(empty + s, (uint32_t)((k / NS) & 1) ^ 1u);
        freed(k);
        uint8_t *dst = ring + (size_t)s * S * STAGE;
        qk_mbar_expect(full + s, (uint32_t)(cnt * STAGE));
        if (whole) {
            qk_bulk_copy(dst, w + u * STAGE, (uint32_t)(cnt * STAGE), full + s);
        } else {
            qk_bulk_copy(dst, w + u * 2048, (uint32_t)(cnt * 2048), full + s);
            qk_bulk_copy(dst + (size_t)S * 2048, sc + u * 128, (uint32_t)(cnt * 128), full + s);
        }
    }
}

template <int NT, int MINB>
__global__ void __launch_bounds__(NT, MINB) k_flow(const uint8_t *__restrict__ w, const uint8_t *__restrict__ sc,
                                                    float *out, int G, int nu, int NS, int S, int pdl, int mode)
{
    extern __shared__ __align__(128) uint8_t ring[];
    __shared__ __align__(8) uint64_t full[16], empty[16];
    __shared__ uint4 xs[1024];
    __shared__ float part[FLOW_PR][QK_QROWS];
    __shared__ int left[FLOW_GR];
    const int C = (int)blockDim.x / 32 - 1;
    for (int i = (int)threadIdx.x; i < FLOW_GR; i += (int)blockDim.x) left[i] = nu;
    const slot_plan pl = slots_begin(xs, full, empty, G, nu, NS, S, C, pdl);
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31;
    const int g0 = pl.g0, nslots = pl.nslots;
    const long long n = pl.n;
    const size_t SLOT = (size_t)S * STAGE;
    if (warp == 0) {
        if (lane != 0) return;
        int fin = 0; /* row groups of the block stored so far */
        auto finish = [&](long long freed) {
            for (; (long long)(fin + 1) * nu <= freed; fin++)
                for (int r = 0; r < QK_QROWS; r++) {
                    float t = 0.0f;
                    for (int j = 0; j < nu; j++) t += part[((long long)fin * nu + j) % FLOW_PR][r];
                    out[(size_t)(g0 + fin) * QK_QROWS + r] = t;
                }
        };
        slots_produce(w, sc, ring, full, empty, pl, NS, S, false, [&](int k) {
            if (k >= NS && !mode) finish((long long)(k - NS + 1) * S);
        });
        for (int k = nslots > NS ? nslots - NS : 0; k < nslots; k++) /* the last uses of each slot */
            qk_mbar_wait(empty + k % NS, (uint32_t)((k / NS) & 1));
        if (!mode) finish(n);
        return;
    }
    const int cw = warp - 1;
    if (pdl) asm volatile("griddepcontrol.wait;" ::: "memory");
    float acc[QK_QROWS] = {0.f, 0.f, 0.f, 0.f};
    int xc = lane;
    for (int k = 0; k < nslots; k++) {
        const int s = k % NS;
        const int cnt = (int)(n - (long long)k * S < S ? n - (long long)k * S : S);
        const uint8_t *slot = ring + (size_t)s * SLOT;
        qk_mbar_wait(full + s, (uint32_t)((k / NS) & 1));
        for (int i = cw; i < cnt; i += C) {
            stage_dot(slot + (size_t)i * 2048, xs, lane, xc, acc, slot + (size_t)S * 2048 + i * 128);
            const float t = rows4_total(acc, lane);
            const int si = k * S + i;
            if ((lane & 7) == 0) part[si % FLOW_PR][lane >> 3] = t;
            if (mode) { /* mode 1: the warp that frees a row group's last stage stores its rows */
                const int gs = (int)((si / nu) % FLOW_GR);
                if (group_last(&left[gs], lane)) {
                    if (lane < QK_QROWS) {
                        const int f = si / nu * nu;
                        float v = 0.0f;
                        for (int j = 0; j < nu; j++) v += part[(f + j) % FLOW_PR][lane];
                        out[(size_t)(g0 + si / nu) * QK_QROWS + lane] = v;
                    }
                    __syncwarp();
                    if (lane == 0) left[gs] = nu;
                }
            }
        }
        __syncwarp();
        if (lane == 0) mbar_arrive(empty + s);
    }
}

/* k_own: k_flow's producer and slots, but each consumer warp owns pieces
 * of row groups (a row group's nu stages cut into h = ceil(nu / 6) pieces
 * of at most 6 consecutive stages; piece j of the block to warp j mod C),
 * accumulates a piece in registers, and the warp that completes a row
 * group's last piece (a shared-memory counter) adds the h partials in piece
 * order (deterministic) and stores the 4 rows. Mode bits (timing only):
 * 1 no sums, 2 the stages read as one region of whole 2176-byte stages
 * (one copy per slot). */
#define OWN_GR 64 /* row groups in flight per block (>= ring stages + C pieces) */

template <int NT, int MINB>
__global__ void __launch_bounds__(NT, MINB) k_own(const uint8_t *__restrict__ w, const uint8_t *__restrict__ sc,
                                                   float *out, int G, int nu, int NS, int S, int pdl, int mode)
{
    extern __shared__ __align__(128) uint8_t ring[];
    __shared__ __align__(8) uint64_t full[16], empty[16];
    __shared__ uint4 xs[1024];
    __shared__ float part[OWN_GR][4][QK_QROWS];
    __shared__ int left[OWN_GR];
    const int C = (int)blockDim.x / 32 - 1;
    const int h = (nu + 5) / 6, P = (nu + h - 1) / h; /* pieces per row group, stages per piece */
    for (int i = (int)threadIdx.x; i < OWN_GR; i += (int)blockDim.x) left[i] = h;
    const slot_plan pl = slots_begin(xs, full, empty, G, nu, NS, S, C, pdl);
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31;
    const int g0 = pl.g0, nslots = pl.nslots;
    const long long n = pl.n;
    const size_t SLOT = (size_t)S * STAGE;
    if (warp == 0) {
        if (lane == 0) slots_produce(w, sc, ring, full, empty, pl, NS, S, (mode & 2) != 0, [](int) {});
        return;
    }
    const int cw = warp - 1;
    if (pdl) asm volatile("griddepcontrol.wait;" ::: "memory");
    float acc[QK_QROWS] = {0.f, 0.f, 0.f, 0.f};
    int xc = lane;
    for (int k = 0; k < nslots; k++) {
        const int s = k % NS;
        const int i0 = k * S, i1 = (int)(n - i0 < S ? n : i0 + S);
        const uint8_t *slot = ring + (size_t)s * SLOT;
        qk_mbar_wait(full + s, (uint32_t)((k / NS) & 1));
        /* the pieces that meet [i0, i1): piece q = (g, j) covers stages g nu + j P .. + P (clipped to the group) */
        const int q0 = (i0 / nu) * h + (i0 % nu) / P;
        for (int q = q0 + ((cw - q0) % C + C) % C;; q += C) {
            const int g = q / h, j = q % h, ps = g * nu + j * P, pe = ps + P < (g + 1) * nu ? ps + P : (g + 1) * nu;
            if (ps >= i1) break;
            const int a = ps > i0 ? ps : i0, e = pe < i1 ? pe : i1;
            for (int i = a; i < e; i++)
                if (mode & 2)
                    stage_dot(slot + (size_t)(i - i0) * STAGE, xs, lane, xc, acc);
                else
                    stage_dot(slot + (size_t)(i - i0) * 2048, xs, lane, xc, acc, slot + (size_t)S * 2048 + (i - i0) * 128);
            if (e == pe && !(mode & 1)) { /* the piece is done */
                const float t = rows4_total(acc, lane);
                const int gs = (int)(g % OWN_GR);
                if ((lane & 7) == 0) part[gs][j][lane >> 3] = t;
                if (group_last(&left[gs], lane)) {
                    if (lane < QK_QROWS) {
                        float v = 0.0f;
                        for (int jj = 0; jj < h; jj++) v += part[gs][jj][lane];
                        out[(size_t)(g0 + g) * QK_QROWS + lane] = v;
                    }
                    __syncwarp();
                    if (lane == 0) left[gs] = h;
                }
            }
        }
        __syncwarp();
        if (lane == 0) mbar_arrive(empty + s);
    }
    if ((mode & 1) && acc[0] + acc[1] + acc[2] + acc[3] == 1.2345f) out[blockIdx.x] = 1.0f; /* keeps the work */
}

typedef void (*flow_fn)(const uint8_t *, const uint8_t *, float *, int, int, int, int, int, int);

static flow_fn flow_kernel(int nb, int own = 0)
{
    if (own) return nb == 1 ? k_own<512, 1> : k_own<288, 2>;
    return nb == 1 ? k_flow<512, 1> : k_flow<288, 2>;
}

/* GB/s of one N x K INT4 g128 GEMV shape under k_flow, consumers finishing
 * (mode 1), one launch alone; -1 on an error. */
static double time_flow(cudaStream_t st, const uint8_t *pool, float *out, int nsm, int N, int K, int NS, int S,
                        int C, int nb)
{
    const int G = N / 4, nu = K / 1024;
    const size_t wbytes = (size_t)N * K / 2, sbytes = (size_t)N * (K / 128) * 4;
    const size_t smem = (size_t)NS * S * STAGE;
    const flow_fn f = flow_kernel(nb);
    if (cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess) return -1;
    return time_launches(st, "k_flow", wbytes + sbytes, [&](int r) {
        const uint8_t *w = pool + (size_t)(r % 8) * (wbytes + sbytes + 4096);
        f<<<nb * nsm, 32 * (C + 1), smem, st>>>(w, w + wbytes, out, G, nu, NS, S, 0, 1);
    });
}

/* The GEMVs of a 27B INT4 g128 step, in order (no lm_head, no small ops):
 * per layer the in-projection (GDN qkv|z 16384 rows, attention 14336), out,
 * gate|up, down; each op's tiled codes then scale words, a region of its own. */
struct chain_op {
    int n, k;
    size_t w; /* offset in the pool */
};

static int chain_27b(chain_op *c, size_t *total)
{
    int m = 0;
    size_t at = 0;
    for (int l = 0; l < 64; l++) {
        const int shp[4][2] = {{l % 4 == 3 ? 14336 : 16384, 5120}, {5120, 6144}, {34816, 5120}, {5120, 17408}};
        for (int j = 0; j < 4; j++, m++) {
            c[m].n = shp[j][0];
            c[m].k = shp[j][1];
            c[m].w = at;
            at += ((size_t)int4_bytes(c[m].n, c[m].k) + 4095) / 4096 * 4096;
        }
    }
    *total = at;
    return m;
}

/* Part 4's schedules: a kernel family and its mode (k_ring: sums; k_flow:
 * who finishes the rows; k_own: its mode bits). */
enum { F_RING, F_FLOW, F_OWN, F_PERSIST };
struct chain_sched {
    const char *name;
    int family, mode;
    int layout; /* k_ring: 2 tiled, 3 interleaved by warp (other families: 0) */
};

/* ms per step of the chain c[0 .. m) under schedule sc, as PDL launches in
 * one CUDA graph, best of 5; -1 on an error. */
static double time_chain(cudaStream_t st, uint8_t *pool, unsigned *done, float *out, int nsm, const chain_op *c, int m,
                         const chain_sched &sc, int NS, int S, int C, int nb)
{
    static op_table t;
    if (sc.family == F_PERSIST) { /* k_persist's per-block shares of the same ops */
        t.n = m;
        for (int i = 0; i < m; i++) {
            t.per_block[i] = (int4_bytes(c[i].n, c[i].k) / nsm + STAGE - 1) / STAGE * STAGE;
            t.base[i] = (long long)c[i].w;
            t.spin_ns[i] = 0;
        }
        if (cudaMemcpyToSymbol(c_ops, &t, sizeof t) != cudaSuccess) return -1;
    }
    const bool ring = sc.family == F_RING, slots = sc.family == F_FLOW || sc.family == F_OWN;
    const size_t smem = ring ? (size_t)8 * 2 * STAGE : (size_t)NS * S * STAGE;
    const flow_fn f = flow_kernel(nb, sc.family == F_OWN);
    if (slots && cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess)
        return -1;
    if (ring && cudaFuncSetAttribute(k_ring, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess)
        return -1;
    cudaGraph_t g;
    cudaGraphExec_t ge;
    if (cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal) != cudaSuccess) return -1;
    for (int i = 0; i < m; i++) {
        cudaLaunchConfig_t cfg = {};
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.stream = st;
        cfg.attrs = at;
        cfg.numAttrs = 1;
        cfg.dynamicSmemBytes = smem;
        const uint8_t *w = pool + c[i].w, *s = w + (size_t)c[i].n * c[i].k / 2;
        const int G = c[i].n / 4, nu = c[i].k / 1024;
        cudaError_t e;
        if (ring) {
            cfg.gridDim = dim3((unsigned)(2 * nsm));
            cfg.blockDim = dim3(256);
            e = cudaLaunchKernelEx(&cfg, k_ring, w, s, out, G, nu, 2, sc.layout, 0, 1, 1, sc.mode);
        } else if (slots) {
            cfg.gridDim = dim3((unsigned)(nb * nsm));
            cfg.blockDim = dim3((unsigned)(32 * (C + 1)));
            e = cudaLaunchKernelEx(&cfg, f, w, s, out, G, nu, NS, S, 1, sc.mode);
        } else {
            cfg.gridDim = dim3((unsigned)nsm);
            cfg.blockDim = dim3((unsigned)(32 * (C + 1)));
            e = cudaLaunchKernelEx(&cfg, k_persist, (const uint8_t *)pool, done, out, NS, S * STAGE, C, 1, 0, i, i + 1, 1);
        }
        if (e != cudaSuccess) {
            fprintf(stderr, "persistbench: chain launch: %s\n", cudaGetErrorString(e));
            cudaStreamEndCapture(st, &g);
            return -1;
        }
    }
    if (cudaStreamEndCapture(st, &g) != cudaSuccess || cudaGraphInstantiate(&ge, g, 0) != cudaSuccess) return -1;
    cudaGraphDestroy(g);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    float best = 1e30f;
    for (int rep = 0; rep < 6; rep++) {
        cudaEventRecord(e0, st);
        cudaGraphLaunch(ge, st);
        cudaEventRecord(e1, st);
        if (cudaEventSynchronize(e1) != cudaSuccess) {
            fprintf(stderr, "persistbench: chain: %s\n", cudaGetErrorString(cudaGetLastError()));
            best = -1.0f;
            break;
        }
        float ms = 0;
        cudaEventElapsedTime(&ms, e0, e1);
        if (rep > 0 && ms < best) best = ms;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaGraphExecDestroy(ge);
    return best;
}

/* The 27B INT4 GEMV shapes that parts 2 to 5 time one launch at a time. */
static const struct {
    int n, k;
    const char *name;
} shapes[] = {{34816, 5120, "gate|up"}, {5120, 17408, "down"}, {16384, 5120, "gdn in"}, {5120, 6144, "out"}};

/* Part 4's report: the chain under each schedule, then k_flow's launches alone. */
static int run_part4(cudaStream_t st, uint8_t *pool, unsigned *done, float *out, int nsm, double copy_gbs)
{
    static chain_op c[256];
    size_t total = 0;
    const int m = chain_27b(c, &total);
    printf("\nthe GEMVs of a 27B INT4 g128 step (256 PDL launches in a graph, %.2f GB; no lm_head, no small ops)\n"
           "%-12s %2s %3s %2s %2s %9s %7s\n",
           total / 1e9, "schedule", "NS", "S", "C", "nb", "ms/step", "of copy");
    static const chain_sched ring = {"k_ring", F_RING, 2, 2}, dbl = {"ring-dbl", F_RING, 5, 2},
                             nosum = {"ring-nosum", F_RING, 0, 2}, park = {"ring-park", F_RING, 4, 2},
                             persist = {"k_persist", F_PERSIST, 0, 0}, flow = {"k_flow", F_FLOW, 0, 0},
                             cfin = {"flow-cfin", F_FLOW, 1, 0}, own = {"k_own", F_OWN, 0, 0},
                             own_both = {"own-both", F_OWN, 3, 0};
    static const struct { const chain_sched *sc; int ns, s, c, nb; } cfg[] = {
        {&ring, 2, 1, 8, 2},  {&dbl, 2, 1, 8, 2},   {&nosum, 2, 1, 8, 2},       {&ring, 2, 1, 8, 2},
        {&dbl, 2, 1, 8, 2},   {&nosum, 2, 1, 8, 2}, {&park, 2, 1, 8, 2},        {&persist, 3, 15, 15, 1},
        {&flow, 3, 8, 8, 2},  {&cfin, 3, 8, 8, 2},  {&own, 3, 8, 8, 2},         {&own_both, 3, 8, 8, 2},
        {&ring, 2, 1, 8, 2},  {&dbl, 2, 1, 8, 2},   {&nosum, 2, 1, 8, 2},
    };
    for (int i = 0; i < (int)(sizeof cfg / sizeof cfg[0]); i++) {
        const double ms =
            time_chain(st, pool, done, out, nsm, c, m, *cfg[i].sc, cfg[i].ns, cfg[i].s, cfg[i].c, cfg[i].nb);
        if (ms < 0) return 1;
        printf("%-12s %2d %3d %2d %2d %9.3f %6.1f%%\n", cfg[i].sc->name, cfg[i].ns, cfg[i].s, cfg[i].c, cfg[i].nb, ms,
               100.0 * (total / (ms * 1e6)) / copy_gbs);
    }
    printf("\none INT4 g128 GEMV launch alone (k_flow, consumers finish)\n%-8s %2s %3s %2s %2s %8s %7s\n", "shape", "NS", "S", "C", "nb",
           "GB/s", "of copy");
    for (int si = 0; si < 4; si++)
        for (int i = 0; i < (int)(sizeof cfg / sizeof cfg[0]); i++) {
            if (cfg[i].sc != &cfin) continue; /* (k_ring alone: part 2) */
            const double gbs =
                time_flow(st, pool, out, nsm, shapes[si].n, shapes[si].k, cfg[i].ns, cfg[i].s, cfg[i].c, cfg[i].nb);
            if (gbs < 0) return 1;
            printf("%-8s %2d %3d %2d %2d %8.0f %6.1f%%\n", shapes[si].name, cfg[i].ns, cfg[i].s, cfg[i].c, cfg[i].nb,
                   gbs, 100.0 * gbs / copy_gbs);
        }
    return 0;
}

/* Part 5 (session 27): the tiled layout against the same units interleaved
 * by warp (k_ring layout 3), each GEMV shape alone, then the step's chain;
 * alternating, two rounds. */
static int run_part5(cudaStream_t st, uint8_t *pool, unsigned *done, float *out, int nsm, double copy_gbs)
{
    printf("\none INT4 g128 GEMV launch alone (k_ring, D 2, no sums): layout 2 (tiled) / 3 (interleaved by warp)\n");
    for (int round = 0; round < 2; round++)
        for (int si = 0; si < 4; si++) {
            printf("%-8s", shapes[si].name);
            for (int layout = 2; layout <= 3; layout++) {
                const double gbs = time_ring(st, pool, out, nsm, shapes[si].n, shapes[si].k, 2, layout, 0, 1);
                if (gbs < 0) return 1;
                printf("  layout %d %6.0f GB/s %5.1f%%", layout, gbs, 100.0 * gbs / copy_gbs);
            }
            printf("\n");
        }
    static chain_op c[256];
    size_t total = 0;
    const int m = chain_27b(c, &total);
    static const chain_sched sched[] = {{"ring", F_RING, 2, 2},  {"ring-ilv", F_RING, 2, 3},
                                        {"nosum", F_RING, 0, 2}, {"nosum-ilv", F_RING, 0, 3}};
    printf("\nthe GEMVs of a 27B INT4 g128 step (256 PDL launches, %.2f GB)\n", total / 1e9);
    for (int round = 0; round < 2; round++)
        for (const chain_sched &sc : sched) {
            const double ms = time_chain(st, pool, done, out, nsm, c, m, sc, 2, 1, 8, 2);
            if (ms < 0) return 1;
            printf("%-10s %9.3f ms %6.1f%%\n", sc.name, ms, 100.0 * (total / (ms * 1e6)) / copy_gbs);
        }
    return 0;
}

int main(int argc, char **argv)
{
    int nsm = 0, cc = 0;
    CK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, 0));
    CK(cudaDeviceGetAttribute(&cc, cudaDevAttrComputeCapabilityMajor, 0));
    if (cc < 9) {
        fprintf(stderr, "persistbench: needs sm_90 or later (bulk copies, mbarriers); this GPU is sm_%d\n", cc * 10);
        return 1;
    }
    /* "3": part 3 against part 2's engine schedule only; "4" / "5": part 4 / 5 only; another argument: the
     * first 4 runs of part 1 */
    const int part3 = argc > 1 && strcmp(argv[1], "3") == 0, part4 = argc > 1 && strcmp(argv[1], "4") == 0;
    const int part5 = argc > 1 && strcmp(argv[1], "5") == 0;
    const int quick = argc > 1;
    op_table *t = (op_table *)calloc(1, sizeof *t);
    long long total = 0;
    ops_27b_int4(t, nsm, 0, 0, 1, &total);
    const size_t pool_bytes = (size_t)total + ((size_t)1 << 20);
    uint8_t *pool;
    unsigned *done;
    float *out;
    CK(cudaMalloc(&pool, pool_bytes));
    CK(cudaMemset(pool, 1, pool_bytes));
    CK(cudaMalloc(&done, 4));
    CK(cudaMalloc(&out, 65536 * sizeof(float))); /* k_batch stores every row (N <= 34816) */
    CK(cudaFuncSetAttribute(k_persist, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024));
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));

    /* the copy figure the engine's percentages use */
    const size_t half = ((size_t)1 << 30);
    CK(cudaEventRecord(e0, st));
    for (int r = 0; r < 10; r++) CK(cudaMemcpyAsync(pool, pool + half, half, cudaMemcpyDeviceToDevice, st));
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    float cms = 0;
    CK(cudaEventElapsedTime(&cms, e0, e1));
    const double copy_gbs = 10.0 * 2 * half / (cms * 1e6);
    printf("device-to-device copy: %.0f GB/s (read + write); %d SMs\n", copy_gbs, nsm);
    if (part4) return run_part4(st, pool, done, out, nsm, copy_gbs);
    if (part5) return run_part5(st, pool, done, out, nsm, copy_gbs);

    /* slots are whole stages: 7 x 2176 = 15232 bytes ("16K"), 15 x = 32640 ("32K"), 1 x ("2K") */
    static const struct { int ns, slot, c, decode, barrier, gdn_ns, attn_ns, head; } runs[] = {
        {12, 7 * STAGE, 8, 0, 0, 0, 0, 1},       {12, 7 * STAGE, 8, 0, 1, 0, 0, 1},
        {12, 7 * STAGE, 8, 1, 0, 0, 0, 1},       {6, 15 * STAGE, 8, 1, 0, 0, 0, 1},
        {6, 15 * STAGE, 15, 1, 0, 0, 0, 1},      {3, 30 * STAGE, 15, 1, 0, 0, 0, 1},
        {6, 15 * STAGE, 8, 1, 1, 0, 0, 1},       {6, 15 * STAGE, 15, 1, 1, 0, 0, 1},
        {3, 30 * STAGE, 15, 1, 1, 0, 0, 1},      {6, 15 * STAGE, 15, 1, 1, 2000, 5000, 1},
        {6, 15 * STAGE, 15, 1, 1, 4000, 10000, 1}, {6, 15 * STAGE, 15, 1, 1, 6000, 14000, 1},
        {6, 15 * STAGE, 15, 1, 1, 4000, 10000, 0}, {6, 15 * STAGE, 15, 0, 1, 4000, 10000, 1},
        {4, 15 * STAGE, 15, 1, 1, 4000, 10000, 1},
        /* one launch per op; 3 slots leave room for the next launch's block on the SM */
        {3, 15 * STAGE, 15, 0, 2, 0, 0, 1},        {3, 15 * STAGE, 15, 1, 2, 0, 0, 1},
        {3, 15 * STAGE, 15, 1, 2, 4000, 10000, 1}, {2, 15 * STAGE, 15, 1, 2, 4000, 10000, 1},
        {3, 15 * STAGE, 7, 1, 2, 4000, 10000, 1},  {6, 15 * STAGE, 15, 1, 2, 4000, 10000, 1},
    };
    printf("%4s %6s %2s %6s %7s %7s %7s %5s %9s %8s %7s\n", "NS", "SLOT", "C", "decode", "barrier", "gdn_ns", "attn_ns",
           "head", "ms/step", "GB/s", "of copy");
    const int nrun = part3 ? 0 : quick ? 4 : (int)(sizeof runs / sizeof runs[0]);
    for (int r = 0; r < nrun; r++) {
        ops_27b_int4(t, nsm, runs[r].gdn_ns, runs[r].attn_ns, runs[r].head, &total);
        CK(cudaMemcpyToSymbol(c_ops, t, sizeof *t));
        const size_t smem = (size_t)runs[r].ns * runs[r].slot;
        cudaGraphExec_t ge = NULL;
        if (runs[r].barrier == 2) { /* one launch per op */
            cudaGraph_t g;
            CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
            for (int i = 0; i < t->n; i++) {
                cudaLaunchConfig_t cfg = {};
                cudaLaunchAttribute at[1];
                at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
                at[0].val.programmaticStreamSerializationAllowed = 1;
                cfg.gridDim = dim3((unsigned)nsm);
                cfg.blockDim = dim3((unsigned)(32 * (runs[r].c + 1)));
                cfg.dynamicSmemBytes = smem;
                cfg.stream = st;
                cfg.attrs = at;
                cfg.numAttrs = 1;
                CK(cudaLaunchKernelEx(&cfg, k_persist, (const uint8_t *)pool, done, out, runs[r].ns, runs[r].slot,
                                      runs[r].c, runs[r].decode, 0, i, i + 1, 1));
            }
            CK(cudaStreamEndCapture(st, &g));
            CK(cudaGraphInstantiate(&ge, g, 0));
            CK(cudaGraphDestroy(g));
        }
        float best = 1e30f;
        for (int rep = 0; rep < 6; rep++) {
            CK(cudaMemsetAsync(done, 0, 4, st));
            CK(cudaEventRecord(e0, st));
            if (runs[r].barrier == 2) {
                CK(cudaGraphLaunch(ge, st));
            } else {
                k_persist<<<nsm, 32 * (runs[r].c + 1), smem, st>>>(pool, done, out, runs[r].ns, runs[r].slot, runs[r].c,
                                                                   runs[r].decode, runs[r].barrier, 0, t->n, 0);
            }
            CK(cudaGetLastError());
            CK(cudaEventRecord(e1, st));
            CK(cudaEventSynchronize(e1));
            float ms = 0;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            if (rep > 0 && ms < best) best = ms;
        }
        if (ge) CK(cudaGraphExecDestroy(ge));
        const double gbs = (double)total / (best * 1e6);
        printf("%4d %6d %2d %6d %7d %7d %7d %5d %9.3f %8.0f %6.1f%%\n", runs[r].ns, runs[r].slot, runs[r].c,
               runs[r].decode, runs[r].barrier, runs[r].gdn_ns, runs[r].attn_ns, runs[r].head, best, gbs,
               100.0 * gbs / copy_gbs);
    }
    printf("bytes per step: %.2f GB (with the lm_head)\n", (double)total / 1e9);

    printf("\none INT4 g128 GEMV launch alone (k_ring: 2 blocks x 8 warps per SM)\n%-8s %7s %6s %2s %6s %8s %3s %8s %7s\n",
           "shape", "N", "K", "D", "layout", "producer", "spc", "GB/s", "of copy");
    for (int si = 0; si < 4; si++) {
        static const int cfg[][4] = {{2, 0, 0, 1}, {2, 2, 0, 1}, {4, 2, 0, 1}, {1, 2, 0, 2}, {2, 2, 0, 2},
                                     {1, 2, 0, 4}, {3, 2, 0, 1}, {1, 1, 0, 2}, {2, 1, 0, 2}};
        for (int c = 0; c < (part3 ? 2 : (int)(sizeof cfg / sizeof cfg[0])); c++) {
            const double gbs = time_ring(st, pool, out, nsm, shapes[si].n, shapes[si].k, cfg[c][0], cfg[c][1],
                                         cfg[c][2], cfg[c][3]);
            if (gbs < 0) return 1;
            printf("%-8s %7d %6d %2d %6d %8d %3d %8.0f %6.1f%%\n", shapes[si].name, shapes[si].n, shapes[si].k,
                   cfg[c][0], cfg[c][1], cfg[c][2], cfg[c][3], gbs, 100.0 * gbs / copy_gbs);
        }
    }
    printf("\none INT4 g128 GEMV launch alone (k_batch: a producer lane and R consumer warps per block)\n%-8s %7s %6s "
           "%2s %3s %2s %8s %7s\n",
           "shape", "N", "K", "NS", "R", "nb", "GB/s", "of copy");
    for (int si = 0; si < 4; si++) {
        static const int cfg[][3] = {{3, 15, 1}, {4, 15, 1}, {6, 15, 1}, {4, 12, 1}, {4, 10, 1}, {6, 10, 1}, {3, 7, 2}, {4, 7, 2}};
        for (int c = 0; c < (int)(sizeof cfg / sizeof cfg[0]); c++) {
            const double gbs =
                time_batch(st, pool, out, nsm, shapes[si].n, shapes[si].k, cfg[c][0], cfg[c][1], cfg[c][2]);
            if (gbs < 0) return 1;
            printf("%-8s %7d %6d %2d %3d %2d %8.0f %6.1f%%\n", shapes[si].name, shapes[si].n, shapes[si].k, cfg[c][0],
                   cfg[c][1], cfg[c][2], gbs, 100.0 * gbs / copy_gbs);
        }
    }
    return 0;
}
