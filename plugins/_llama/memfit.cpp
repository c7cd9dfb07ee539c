/* Memory per device as llama.cpp itself counts it, and llama.cpp's own fit of a model to free memory,
   behind a C interface for the cffi module (plugins/_llama/ffi_build.py compiles this file into it).

   llama.cpp measures a model without allocating anything (llama_model_params.no_alloc: the metadata is
   read and every buffer is sized, not allocated) and reports the bytes of each buffer type through
   llama_get_memory_breakdown; common_fit_params (common/fit.h, the engine of llama-server's --fit)
   chooses n_gpu_layers, tensor_split and tensor overrides that leave a margin free on each device.
   Both are C++ (std::map, references), so they are reached from here. No C++ exception crosses into C. */

#include <cstdint>
#include <cstring>
#include <exception>

#include "ggml-backend.h"
#include "llama.h"
#include "fit.h"
#include "log.h"
#include "llama-ext.h"
#include "mtmd.h"
#include "memfit.h"

namespace {

/* fit.cpp talks through common's log (stdout for its INFO lines); keep only its warnings and errors,
   which go to stderr, the runner's log. */
void quiet_common_log() {
    static bool done = false;
    if (!done) {
        common_log_set_verbosity_thold(LOG_LEVEL_WARN);
        done = true;
    }
}

int32_t slot_of(ggml_backend_dev_t dev, struct corral_device_memory * out, int32_t * n, int32_t cap) {
    const char * name = ggml_backend_dev_name(dev);
    for (int32_t i = 0; i < *n; i++) {
        if (std::strncmp(out[i].name, name, sizeof(out[i].name) - 1) == 0) {
            return i;
        }
    }
    if (*n >= cap) {
        return -1;
    }
    struct corral_device_memory * m = &out[*n];
    std::memset(m, 0, sizeof(*m));
    std::strncpy(m->name, name, sizeof(m->name) - 1);
    m->type = (int32_t) ggml_backend_dev_type(dev);
    size_t free = 0, total = 0;
    ggml_backend_dev_memory(dev, &free, &total);
    m->free = free;
    m->total = total;
    return (*n)++;
}

int32_t breakdown(const struct llama_context * ctx, struct corral_device_memory * out, int32_t cap) {
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (cpu == nullptr || cap < 1) {
        return -1;
    }
    int32_t n = 0;
    slot_of(cpu, out, &n, cap);  /* the host first, always */
    for (const auto & [buft, mb] : llama_get_memory_breakdown(ctx)) {
        ggml_backend_dev_t dev = ggml_backend_buft_get_device(buft);
        if (ggml_backend_buft_is_host(buft) || dev == nullptr ||
            ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU) {
            dev = cpu;  /* CPU buffers, repacked CPU weights, a GPU backend's pinned host buffers */
        }
        int32_t i = slot_of(dev, out, &n, cap);
        if (i < 0) {
            return -1;
        }
        out[i].model += mb.model;
        out[i].context += mb.context;
        out[i].compute += mb.compute;
    }
    return n;
}

}  // namespace

/* What ctx (and the model it was made from) holds on each device; the number of entries, or -1. */
int32_t corral_context_memory(const struct llama_context * ctx, struct corral_device_memory * out, int32_t cap) {
    try {
        return breakdown(ctx, out, cap);
    } catch (const std::exception &) {
        return -1;
    }
}

/* What loading `path` with these parameters would take on each device, measured by llama.cpp without
   allocating (as common_fit_params measures). Entries written, -1 if the model cannot be read, -2 if
   no context can be made, -3 on any other failure. */
int32_t corral_measure(const char * path, const struct llama_model_params * mparams,
                       const struct llama_context_params * cparams, struct corral_device_memory * out,
                       int32_t cap, int32_t * n_layer) {
    llama_model * model = nullptr;
    llama_context * ctx = nullptr;
    int32_t rc = -3;
    try {
        llama_model_params mp = *mparams;
        mp.no_alloc = true;
        mp.load_mode = LLAMA_LOAD_MODE_NONE;
        mp.progress_callback = nullptr;
        model = llama_model_load_from_file(path, mp);
        if (model == nullptr) {
            return -1;
        }
        *n_layer = llama_model_n_layer(model);
        ctx = llama_init_from_model(model, *cparams);
        rc = ctx == nullptr ? -2 : breakdown(ctx, out, cap);
    } catch (const std::exception &) {
        rc = -3;
    }
    if (ctx != nullptr) {
        llama_free(ctx);
    }
    if (model != nullptr) {
        llama_model_free(model);
    }
    return rc;
}

/* common_fit_params: sets mparams->n_gpu_layers (and, over several devices, tensor_split and
   overrides) so each device keeps margins[i] bytes free; the parameters must be llama.cpp's defaults
   where the fit may change them. 0 fitted, 1 cannot fit, 2 error. Not thread-safe (it swaps the
   global llama log callback while it measures). */
int32_t corral_fit(const char * path, struct llama_model_params * mparams, struct llama_context_params * cparams,
                   float * tensor_split, struct llama_model_tensor_buft_override * overrides, size_t * margins) {
    try {
        quiet_common_log();
        return (int32_t) common_fit_params(path, mparams, cparams, tensor_split, overrides, margins,
                                           cparams->n_ctx, nullptr, GGML_LOG_LEVEL_ERROR);
    } catch (const std::exception &) {
        return 2;
    }
}

/* What the projector (mmproj) at `path` takes on each device with these parameters, as llama.cpp's
   fit measures it (mtmd_get_memory_usage: weights and compute buffers, counted here as compute).
   Entries written, or -1. */
int32_t corral_projector_memory(const char * path, const struct mtmd_context_params * params,
                                struct corral_device_memory * out, int32_t cap) {
    try {
        ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
        if (cpu == nullptr || cap < 1) {
            return -1;
        }
        int32_t n = 0;
        slot_of(cpu, out, &n, cap);
        for (const auto & [dev, size] : mtmd_get_memory_usage(path, *params)) {
            ggml_backend_dev_t d = dev;
            if (d == nullptr || ggml_backend_dev_type(d) == GGML_BACKEND_DEVICE_TYPE_CPU) {
                d = cpu;
            }
            int32_t i = slot_of(d, out, &n, cap);
            if (i < 0) {
                return -1;
            }
            out[i].compute += size;
        }
        return n;
    } catch (const std::exception &) {
        return -1;
    }
}
