/* The CPU engine's thread pool (pool.h). One job at a time: the caller publishes it under the mutex
 * and bumps the generation; the workers wake, take items from an atomic counter, and the last one
 * to finish signals the caller. */
#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

typedef struct {
    pthread_t tid;
    struct bs_pool *p;
    int thread; /* 1..threads-1 */
} pool_worker;

struct bs_pool {
    int threads; /* the caller's included */
    pool_worker *workers;
    int started; /* threads started (threads - 1 when pool_new succeeded) */
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    /* the job, written under mu before gen changes */
    unsigned long gen;
    int stop;
    pool_fn fn;
    void *ctx;
    int n, grain;
    int busy; /* workers still on the current job (under mu) */
    atomic_int next;
};

static void run_items(bs_pool *p, pool_fn fn, void *ctx, int n, int grain, int thread) {
    for (;;) {
        int i0 = atomic_fetch_add_explicit(&p->next, grain, memory_order_relaxed);
        if (i0 >= n) return;
        int i1 = n - i0 < grain ? n : i0 + grain;
        for (int i = i0; i < i1; i++) fn(ctx, i, thread);
    }
}

static void *worker_main(void *arg) {
    const pool_worker *me = arg;
    bs_pool *p = me->p;
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->gen == seen) pthread_cond_wait(&p->wake, &p->mu);
        if (p->stop) break;
        seen = p->gen;
        pool_fn fn = p->fn;
        void *ctx = p->ctx;
        int n = p->n, grain = p->grain;
        pthread_mutex_unlock(&p->mu);
        run_items(p, fn, ctx, n, grain, me->thread);
        pthread_mutex_lock(&p->mu);
        if (--p->busy == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

bs_pool *pool_new(int threads) {
    bs_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->threads = threads < 1 ? 1 : threads;
    atomic_init(&p->next, 0);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    if (p->threads > 1 && !(p->workers = calloc((size_t)p->threads - 1, sizeof *p->workers))) {
        pool_free(p);
        return NULL;
    }
    for (int t = 1; t < p->threads; t++) {
        pool_worker *w = &p->workers[t - 1];
        w->p = p, w->thread = t;
        if (pthread_create(&w->tid, NULL, worker_main, w) != 0) {
            pool_free(p);
            return NULL;
        }
        p->started++;
    }
    return p;
}

void pool_free(bs_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int t = 0; t < p->started; t++) pthread_join(p->workers[t].tid, NULL);
    pthread_cond_destroy(&p->done);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->mu);
    free(p->workers);
    free(p);
}

int pool_threads(const bs_pool *p) {
    return p->threads;
}

void pool_for(bs_pool *p, int n, int grain, pool_fn fn, void *ctx) {
    if (grain < 1) grain = 1;
    if (p->threads <= 1 || n <= grain) {
        for (int i = 0; i < n; i++) fn(ctx, i, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->grain = grain;
    p->busy = p->started;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    p->gen++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);

    run_items(p, fn, ctx, n, grain, 0);

    pthread_mutex_lock(&p->mu);
    while (p->busy > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
