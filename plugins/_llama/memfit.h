/* memfit.cpp's C interface: memory per device as llama.cpp counts it, and llama.cpp's fit. */
#ifndef CORRAL_MEMFIT_H
#define CORRAL_MEMFIT_H

#include <stdint.h>
#include <stddef.h>
#include "llama.h"
#include "mtmd.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One device's share of a model: weights, context (KV cache, recurrent state), compute buffers. The
   host (system RAM: CPU buffers, repacked CPU weights, pinned host buffers) is the device named "CPU". */
struct corral_device_memory {
    char name[128];
    int32_t type;     /* enum ggml_backend_dev_type */
    uint64_t model;
    uint64_t context;
    uint64_t compute;
    uint64_t free;    /* the device's free and total memory as ggml reports them now */
    uint64_t total;
};

int32_t corral_context_memory(const struct llama_context * ctx, struct corral_device_memory * out, int32_t cap);
int32_t corral_measure(const char * path, const struct llama_model_params * mparams,
                       const struct llama_context_params * cparams, struct corral_device_memory * out,
                       int32_t cap, int32_t * n_layer);
int32_t corral_fit(const char * path, struct llama_model_params * mparams, struct llama_context_params * cparams,
                   float * tensor_split, struct llama_model_tensor_buft_override * overrides, size_t * margins);
int32_t corral_projector_memory(const char * path, const struct mtmd_context_params * params,
                                struct corral_device_memory * out, int32_t cap);

#ifdef __cplusplus
}
#endif

#endif
