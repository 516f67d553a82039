// The single failure path behind CUDA_CHECK / CUBLAS_CHECK / CUDNN_CHECK.
#include <cstdio>

#include "cuda_check.h"

extern "C" int bs_cuda_fail(char *err, const char *what, const char *status, const char *file, int line) {
    if (err) snprintf(err, 512, "%s failed: %s (%s:%d)", what, status, file, line);
    return -1;
}
