/* Shared by the GPU tests (tests/gpu): CKC(call) ends the test program with file, line, the call
 * and the CUDA error when a runtime call fails outside the checks proper (set-up, copies). */
#ifndef BS_TESTS_GPU_CUDA_TEST_H
#define BS_TESTS_GPU_CUDA_TEST_H

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>

#define CKC(x)                                                                                                         \
    do {                                                                                                               \
        cudaError_t _e = (x);                                                                                          \
        if (_e != cudaSuccess) {                                                                                       \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(_e));                        \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

/* 0 when a CUDA device is present; else says so and returns 1 (the test's exit status) */
static inline int bs_gpu_test_need_device(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0) return 0;
    fprintf(stderr, "no CUDA device: this test needs one\n");
    return 1;
}

#endif
