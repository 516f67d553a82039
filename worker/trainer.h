/* Head training: the notebook's recipe (BCEWithLogitsLoss, mean; torch.optim.AdamW) done by hand
 * in double precision, numerically matching PyTorch. Used by `train-head` and by the `train` job.
 * docs/training.md has the exact math. Legend: N rows, C input features, Hd hidden width, b batch rows. */
#ifndef BS_TRAINER_H
#define BS_TRAINER_H

#include <stdint.h>

#include "common.h"
#include "head.h"

typedef struct {
    int epochs;          /* passes over the data (notebook: 10) */
    int batch;           /* rows per step; the last batch of an epoch may be smaller (notebook: 16) */
    double lr;           /* 2e-4 */
    double weight_decay; /* 0.01, decoupled, on every parameter including biases */
    double beta1, beta2; /* 0.9, 0.999 */
    double eps;          /* 1e-8 */
    uint64_t seed;       /* shuffle stream: bs_rng seeded with this */
    int shuffle;         /* 1: Fisher-Yates permutation per epoch; 0: rows in order */
} trainer_opts;

/* The notebook's settings: 10 epochs, batch 16, AdamW defaults with lr 2e-4, shuffle on, seed 0. */
void trainer_opts_default(trainer_opts *o);
/* BS_ERR naming the first out-of-range field. */
int trainer_opts_check(const trainer_opts *o, char *err);

/* AdamW state (m, v, step count) and every buffer one step needs, for one head. The head is
 * borrowed: it must outlive the trainer and is updated in place. */
typedef struct trainer trainer;

trainer *trainer_new(bs_head *h, const trainer_opts *o, int max_batch, char *err);
void trainer_free(trainer *t);

/* One optimisation step on the b rows X[idx[0]], ..., X[idx[b-1]] (idx NULL: rows 0..b-1),
 * 1 <= b <= max_batch: forward, mean BCE, backward, AdamW update. Allocates nothing.
 * X (rows, C), y (rows) in {0, 1}. Returns the batch loss BEFORE the update (NAN when b is out of range). */
double trainer_step(trainer *t, const float *X, const float *y, const int *idx, int b);
/* Steps taken so far (PyTorch's `state['step']`). */
int64_t trainer_steps(const trainer *t);
/* The gradient of the last step, laid out fc1.weight (Hd*C), fc1.bias (Hd), fc2.weight (Hd), fc2.bias (1). */
const double *trainer_grad(const trainer *t);

/* Called after every step; epoch counts from 1, step counts from 1 across epochs; loss is the
 * batch loss before that step's update. Return non-zero to stop training (trainer_fit fails). */
typedef int (*trainer_step_fn)(void *ctx, int epoch, int64_t step, double loss);

/* Trains h in place on X (N, C), y (N): epochs x ceil(N / batch) steps. Checks shapes, that every
 * label is 0 or 1 and every feature finite; fails (head partly trained) when a loss is not finite. */
int trainer_fit(bs_head *h, const float *X, const float *y, int N, const trainer_opts *o, trainer_step_fn on_step,
                void *ctx, char *err);

/* Fisher-Yates over perm[0..n) with r: for i = n-1 down to 1, j = bs_rng_next(r) % (i + 1), swap. */
void trainer_shuffle(int *perm, int n, bs_rng *r);

/* PyTorch's nn.Linear init for both layers: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
 * drawn in order fc1.weight, fc1.bias, fc2.weight, fc2.bias as lo + (hi - lo) * bs_rng_uniform(r). */
void trainer_init_head(bs_head *h, bs_rng *r);

typedef struct {
    int n, n_pos;    /* rows, rows with label 1 */
    double loss;     /* mean BCE with logits */
    double accuracy; /* fraction where (sigmoid(logit) > 0.5 in float) == label */
    double auc;      /* ROC AUC (Mann-Whitney U, ties count 1/2); NAN when only one class is present */
} trainer_metrics;

/* Evaluates h on X (N, C), y (N) in {0, 1}. Allocates O(N). */
int trainer_eval(const bs_head *h, const float *X, const float *y, int N, trainer_metrics *m, char *err);

/* Reads a safetensors file with `features` (N, C) (F32/F16/BF16) and `labels` (N) or (N, 1) (F32/F16/BF16, or
 * I64/I32/I8/U8/BOOL), every label 0 or 1 and every feature finite, into
 * new arrays *X (N, C) and *y (N) (free both with free()). Errors name the file and the tensor. */
int trainer_read_data(const char *path, float **X, float **y, int *N, int *C, char *err);

/* Numerically stable BCE with logits for one element: max(x, 0) - x*y + log1p(exp(-|x|)). */
double trainer_bce(double logit, double label);

#endif
