/* Shared by the GPU tests (tests/gpu): CKC(call) ends the test program with file, line, the call
 * and the CUDA error when a runtime call fails outside the checks proper (set-up, copies); the
 * device checks; and, for tests that include convert.h first, uploads and downloads through the
 * conversion kernel. */
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

/* 1 when the current device is a Hopper (compute capability 9.x): the sm_90a kernels run there */
static inline int bs_gpu_test_hopper(void) {
    int dev = 0, major = 0;
    CKC(cudaGetDevice(&dev));
    CKC(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    return major == 9;
}

#ifdef BS_KERNELS_CONVERT_H
/* n floats to new device memory of type dt (rounded there, as the engine uploads; 256 bytes spare) */
static inline void *bs_gpu_test_to_device(const float *h, size_t n, bs_dtype dt) {
    void *d = NULL, *f = NULL;
    CKC(cudaMalloc(&d, n * bs_dtype_size(dt) + 256));
    CKC(cudaMalloc(&f, n * 4));
    CKC(cudaMemcpy(f, h, n * 4, cudaMemcpyHostToDevice));
    CKC(convert_forward(d, dt, f, BS_DT_F32, n, 0));
    CKC(cudaDeviceSynchronize());
    cudaFree(f);
    return d;
}
/* n elements of type dt at d (device) as floats into h */
static inline void bs_gpu_test_from_device(float *h, const void *d, size_t n, bs_dtype dt) {
    float *f = NULL;
    CKC(cudaMalloc((void **)&f, n * 4));
    CKC(convert_forward(f, BS_DT_F32, d, dt, n, 0));
    CKC(cudaMemcpy(h, f, n * 4, cudaMemcpyDeviceToHost));
    cudaFree(f);
}
#endif

#endif
