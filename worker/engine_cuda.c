/* Placeholder until the CUDA engine lands (GPU issue): reports a clear error. */
#include "common.h"
#include "engine.h"

bs_engine *engine_cuda_new(const bs_model *m, const bs_engine_opts *opts, char *err) {
    (void)m;
    (void)opts;
    bs_err(err, "the CUDA engine is not built yet: use --device cpu");
    return NULL;
}

int engine_cuda_device_count(void) { return 0; }
