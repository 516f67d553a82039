/* One check macro for CUDA, cuBLAS(Lt) and cuDNN calls: on failure it records the
 * statement, file and line into the caller's error buffer and returns BS_ERR (a
 * long-running worker reports and carries on; it never aborts). */
#ifndef BS_CUDA_CHECK_H
#define BS_CUDA_CHECK_H

#ifdef __cplusplus
extern "C" {
#endif

/* Formats "<what> failed: <status> (<file>:<line>)" into err (512 bytes). Returns -1. */
int bs_cuda_fail(char *err, const char *what, const char *status, const char *file, int line);

#ifdef __cplusplus
}
#endif

#define BS_CHECK_GENERIC(stmt, ok_expr, status_str)                                                                    \
    do {                                                                                                               \
        __typeof__(stmt) _st = (stmt);                                                                                 \
        if (!(ok_expr)) return bs_cuda_fail(err, #stmt, (status_str), __FILE__, __LINE__);                             \
    } while (0)

#define CUDA_CHECK(stmt) BS_CHECK_GENERIC(stmt, _st == cudaSuccess, cudaGetErrorString(_st))
#define CUBLAS_CHECK(stmt) BS_CHECK_GENERIC(stmt, _st == CUBLAS_STATUS_SUCCESS, cublasGetStatusString(_st))
#define CUDNN_CHECK(stmt) BS_CHECK_GENERIC(stmt, _st == CUDNN_STATUS_SUCCESS, cudnnGetErrorString(_st))

#endif
