/* The CPU engine's thread pool: every item runs exactly once per loop, on a thread index inside
 * the pool, its writes are visible when pool_for returns, the items are shared out between the
 * threads, and thousands of back-to-back loops (the engine runs four per layer) neither lose nor
 * repeat an item. Run under ASan in CI too. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#include "pool.h"
#include "test.h"

typedef struct {
    int *count;       /* per item: times run */
    int *thread_of;   /* per item: the thread that ran it */
    int threads, bad; /* bad: items run with a thread index out of range */
} count_ctx;

static void count_item(void *ctx, int i, int thread) {
    count_ctx *c = ctx;
    if (thread < 0 || thread >= c->threads) {
        __atomic_fetch_add(&c->bad, 1, __ATOMIC_RELAXED);
        return;
    }
    c->count[i]++; /* one thread per item, so no race unless the pool repeats an item */
    c->thread_of[i] = thread;
}

static void pool_runs_every_item_once(void) {
    const int sizes[] = {0, 1, 2, 3, 7, 31, 32, 33, 1000}, grains[] = {1, 3, 4, 64};
    for (int threads = 0; threads <= 5; threads++) {
        bs_pool *p = pool_new(threads);
        CHECK(p != NULL);
        if (!p) continue;
        CHECK_INT(pool_threads(p), threads < 1 ? 1 : threads);
        for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++)
            for (size_t gi = 0; gi < sizeof grains / sizeof *grains; gi++) {
                const int n = sizes[si];
                count_ctx c = {calloc((size_t)n + 1, sizeof(int)), calloc((size_t)n + 1, sizeof(int)), pool_threads(p),
                               0};
                pool_for(p, n, grains[gi], count_item, &c);
                int once = 1;
                for (int i = 0; i < n; i++) once &= c.count[i] == 1;
                if (!once || c.bad) fprintf(stderr, "  threads %d n %d grain %d\n", threads, n, grains[gi]);
                CHECK(once);
                CHECK_INT(c.bad, 0);
                CHECK_INT(c.count[n], 0); /* nothing past the end */
                free(c.count), free(c.thread_of);
            }
        pool_free(p);
    }
}

/* Each item waits until another thread has started an item too (or gives up after ~2 s): with two
 * threads, the two items must run at once, on different thread indices. */
typedef struct {
    atomic_int started;
    int thread_of[2];
} meet_ctx;

static void meet_item(void *ctx, int i, int thread) {
    meet_ctx *m = ctx;
    atomic_fetch_add(&m->started, 1);
    for (long spin = 0; atomic_load(&m->started) < 2 && spin < 2000000; spin++) sched_yield();
    m->thread_of[i] = thread;
}

static void pool_runs_items_on_two_threads_at_once(void) {
    bs_pool *p = pool_new(2);
    CHECK(p != NULL);
    if (!p) return;
    meet_ctx m = {.thread_of = {-1, -1}};
    atomic_init(&m.started, 0);
    pool_for(p, 2, 1, meet_item, &m);
    CHECK_INT(atomic_load(&m.started), 2);
    CHECK(m.thread_of[0] != m.thread_of[1]);
    CHECK(m.thread_of[0] >= 0 && m.thread_of[0] < 2 && m.thread_of[1] >= 0 && m.thread_of[1] < 2);
    pool_free(p);
}

typedef struct {
    long *sum; /* per item */
    int round;
} round_ctx;

static void round_item(void *ctx, int i, int thread) {
    (void)thread;
    round_ctx *r = ctx;
    r->sum[i] += r->round;
}

static void pool_survives_many_back_to_back_loops(void) {
    enum { N = 37, ROUNDS = 20000 };
    bs_pool *p = pool_new(3);
    CHECK(p != NULL);
    if (!p) return;
    long sum[N] = {0};
    for (int k = 1; k <= ROUNDS; k++) {
        round_ctx r = {sum, k};
        pool_for(p, N, 1 + k % 5, round_item, &r);
    }
    const long want = (long)ROUNDS * (ROUNDS + 1) / 2;
    int all = 1;
    for (int i = 0; i < N; i++) all &= sum[i] == want;
    CHECK(all);
    pool_free(p);
}

int main(void) {
    RUN(pool_runs_every_item_once);
    RUN(pool_runs_items_on_two_threads_at_once);
    RUN(pool_survives_many_back_to_back_loops);
    return bs_test_done();
}
