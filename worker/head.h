/* The classification head: Linear(C, Hd) -> ReLU -> Linear(Hd, 1), sigmoid.
 * Stored as the notebook's ClassificationHead state dict in safetensors:
 * fc1.weight (Hd, C), fc1.bias (Hd), fc2.weight (1, Hd), fc2.bias (1). */
#ifndef BS_HEAD_H
#define BS_HEAD_H

#include <stdint.h>

typedef struct {
    int in_dim;      /* C */
    int hidden;      /* Hd */
    float *fc1_w;    /* (Hd, C) */
    float *fc1_b;    /* (Hd) */
    float *fc2_w;    /* (1, Hd) */
    float *fc2_b;    /* (1) */
    int64_t version; /* 0 for a head from a file */
} bs_head;

/* Loads fc1.weight... (or PREFIX + "fc1.weight"... when prefix is not NULL, e.g. "init."). */
bs_head *head_load(const char *path, const char *prefix, char *err);
bs_head *head_new(int in_dim, int hidden); /* zeroed */
bs_head *head_clone(const bs_head *h);
/* Checks shapes and that every value is finite. */
int head_validate(const bs_head *h, int expect_in_dim, char *err);
int head_save(const bs_head *h, const char *path, char *err);
void head_free(bs_head *h);

/* feat (B, C) -> logit (B), prob (B) (either may be NULL). */
void head_apply(const bs_head *h, const float *feat, int B, float *logit, float *prob);
/* The notebook's rule: positive when sigmoid(logit) > 0.5. */
const char *head_label(float prob);
float bs_sigmoid(float x);

#endif
