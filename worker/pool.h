/* A fixed pool of threads for the CPU engine's parallel loops (attention heads, LayerNorm and GELU
 * row chunks). The caller takes part as thread 0; the other threads sleep on a condition variable
 * between loops instead of spinning.
 *
 * Why not OpenMP: the GEMMs between these loops run on OpenBLAS's own threads. libgomp's threads
 * spin for a while after each loop (its default wait policy), and on a machine with as many cores
 * as threads they took the cores from OpenBLAS's GEMMs and from the worker's Kafka and tokenizer
 * threads (perf: 63 % of a CPU worker's samples in libgomp's spin). OMP_WAIT_POLICY=passive would
 * fix it, but libgomp reads it once at load time, so it cannot be set from inside the program.
 *
 * One loop at a time per pool: pool_for is not reentrant and is called by one thread at a time
 * (the engine's). */
#ifndef BS_POOL_H
#define BS_POOL_H

typedef struct bs_pool bs_pool;

/* fn(ctx, i, thread) for one item i; thread is 0..pool_threads()-1, the index of the thread running
 * it (for per-thread scratch space). */
typedef void (*pool_fn)(void *ctx, int i, int thread);

/* A pool of `threads` threads in all, the caller's included (threads - 1 are started; threads <= 1
 * starts none and pool_for runs its loop inline). NULL when a thread cannot be started. */
bs_pool *pool_new(int threads);
void pool_free(bs_pool *p);
int pool_threads(const bs_pool *p);

/* Runs fn for i = 0..n-1 over the pool's threads and returns when all have run. Threads take `grain`
 * consecutive items at a time from a shared counter (dynamic scheduling). n <= grain runs inline. */
void pool_for(bs_pool *p, int n, int grain, pool_fn fn, void *ctx);

#endif
