/* corral's RPC worker device: a ggml device that forwards every call to this host's real device,
   caps the memory it offers to RPC clients (`corral worker --memory`) and records which model layers
   they placed on it. llama.cpp's RPC server (ggml_backend_rpc_start_server) is handed this device
   instead of the real one; it never knows the difference.

   Compiled into the cffi module (plugins/_llama/ffi_build.py). It uses ggml's internal device and
   buffer interfaces (ggml-backend-impl.h) from the pinned tree, so a pin bump recompiles it against
   the new layouts. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ggml-backend-impl.h"

#define CORRAL_WORKER_MAX_DEVICES 16
#define CORRAL_WORKER_MAX_LAYERS 1024

struct corral_worker_device {
    struct ggml_backend_device dev;          /* what ggml sees; dev.context points back here */
    struct ggml_backend_buffer_type buft;    /* the buffer type clients allocate from */
    ggml_backend_dev_t inner;
    ggml_backend_buffer_type_t inner_buft;
    size_t limit;                            /* bytes offered; 0 = what the real device reports */
    size_t used;                             /* bytes in buffers clients hold now (atomic) */
    struct ggml_backend_buffer_i inner_buffer_i; /* the real buffers' interface, seen at first alloc */
    int have_buffer_i;
    unsigned char layers[CORRAL_WORKER_MAX_LAYERS / 8]; /* blk.N weights written since the last reset */
};

/* One server, at most a few devices: a fixed table, searched by the real buffer type. */
static struct corral_worker_device * g_devices[CORRAL_WORKER_MAX_DEVICES];
static int g_n_devices = 0;

static struct corral_worker_device * corral_worker_of_dev(ggml_backend_dev_t dev) {
    return (struct corral_worker_device *) dev->context;
}

static struct corral_worker_device * corral_worker_of_buffer(ggml_backend_buffer_t buffer) {
    for (int i = 0; i < g_n_devices; i++) {
        if (g_devices[i]->inner_buft == buffer->buft) {
            return g_devices[i];
        }
    }
    return NULL;
}

static size_t corral_used(struct corral_worker_device * w) {
    return __atomic_load_n(&w->used, __ATOMIC_SEQ_CST);
}

/* ---- buffers: count their bytes while they live, note the layers written into them ---------- */
static void corral_buffer_free(ggml_backend_buffer_t buffer) {
    struct corral_worker_device * w = corral_worker_of_buffer(buffer);
    if (w == NULL) {
        return; /* cannot happen: only buffers of a known type get this function */
    }
    if (__atomic_sub_fetch(&w->used, buffer->size, __ATOMIC_SEQ_CST) == 0) {
        /* the client let go of everything (a disconnect frees all its buffers) */
        for (size_t i = 0; i < sizeof(w->layers); i++) {
            __atomic_store_n(&w->layers[i], 0, __ATOMIC_SEQ_CST);
        }
    }
    if (w->inner_buffer_i.free_buffer != NULL) {
        w->inner_buffer_i.free_buffer(buffer);
    }
}

static void corral_buffer_set_tensor(ggml_backend_buffer_t buffer, struct ggml_tensor * tensor,
                                     const void * data, size_t offset, size_t size) {
    struct corral_worker_device * w = corral_worker_of_buffer(buffer);
    if (w == NULL) {
        return; /* cannot happen, as above */
    }
    if (strncmp(tensor->name, "blk.", 4) == 0) {
        char * end = NULL;
        long layer = strtol(tensor->name + 4, &end, 10);
        if (end != tensor->name + 4 && *end == '.' && layer >= 0 && layer < CORRAL_WORKER_MAX_LAYERS) {
            __atomic_or_fetch(&w->layers[layer / 8], (unsigned char) (1u << (layer % 8)), __ATOMIC_SEQ_CST);
        }
    }
    w->inner_buffer_i.set_tensor(buffer, tensor, data, offset, size);
}

/* ---- buffer type: refuse what would go past the limit --------------------------------------- */
static const char * corral_buft_get_name(ggml_backend_buffer_type_t buft) {
    struct corral_worker_device * w = (struct corral_worker_device *) buft->context;
    return w->inner_buft->iface.get_name(w->inner_buft);
}

static ggml_backend_buffer_t corral_buft_alloc_buffer(ggml_backend_buffer_type_t buft, size_t size) {
    struct corral_worker_device * w = (struct corral_worker_device *) buft->context;
    size_t used = corral_used(w);
    if (w->limit != 0 && (size > w->limit || used > w->limit - size)) {
        fprintf(stderr, "corral worker: refused a buffer of %.1f MiB: %.1f of %.1f MiB offered are in use "
                        "(--memory)\n", size / 1048576.0, used / 1048576.0, w->limit / 1048576.0);
        fflush(stderr);
        return NULL;
    }
    ggml_backend_buffer_t buffer = w->inner_buft->iface.alloc_buffer(w->inner_buft, size);
    if (buffer == NULL) {
        return NULL;
    }
    if (!w->have_buffer_i) {
        w->inner_buffer_i = buffer->iface;
        w->have_buffer_i = 1;
    }
    if (buffer->buft != w->inner_buft || buffer->iface.free_buffer != w->inner_buffer_i.free_buffer
            || buffer->iface.set_tensor != w->inner_buffer_i.set_tensor) {
        /* a buffer unlike the first: leave it alone rather than guess how to forward its calls */
        return buffer;
    }
    __atomic_add_fetch(&w->used, buffer->size, __ATOMIC_SEQ_CST);
    buffer->iface.free_buffer = corral_buffer_free;
    buffer->iface.set_tensor = corral_buffer_set_tensor;
    return buffer;
}

static size_t corral_buft_get_alignment(ggml_backend_buffer_type_t buft) {
    struct corral_worker_device * w = (struct corral_worker_device *) buft->context;
    return w->inner_buft->iface.get_alignment(w->inner_buft);
}

static size_t corral_buft_get_max_size(ggml_backend_buffer_type_t buft) {
    struct corral_worker_device * w = (struct corral_worker_device *) buft->context;
    return w->inner_buft->iface.get_max_size(w->inner_buft);
}

static size_t corral_buft_get_alloc_size(ggml_backend_buffer_type_t buft, const struct ggml_tensor * tensor) {
    struct corral_worker_device * w = (struct corral_worker_device *) buft->context;
    return w->inner_buft->iface.get_alloc_size(w->inner_buft, tensor);
}

static bool corral_buft_is_host(ggml_backend_buffer_type_t buft) {
    struct corral_worker_device * w = (struct corral_worker_device *) buft->context;
    return w->inner_buft->iface.is_host(w->inner_buft);
}

/* ---- device: the real one's answers, with the memory capped --------------------------------- */
static const char * corral_dev_get_name(ggml_backend_dev_t dev) {
    ggml_backend_dev_t in = corral_worker_of_dev(dev)->inner;
    return in->iface.get_name(in);
}

static const char * corral_dev_get_description(ggml_backend_dev_t dev) {
    ggml_backend_dev_t in = corral_worker_of_dev(dev)->inner;
    return in->iface.get_description(in);
}

static void corral_dev_get_memory(ggml_backend_dev_t dev, size_t * free, size_t * total) {
    struct corral_worker_device * w = corral_worker_of_dev(dev);
    w->inner->iface.get_memory(w->inner, free, total);
    if (w->limit != 0) {
        size_t used = corral_used(w);
        size_t left = used < w->limit ? w->limit - used : 0;
        *total = w->limit;
        *free = *free < left ? *free : left;
    }
}

static enum ggml_backend_dev_type corral_dev_get_type(ggml_backend_dev_t dev) {
    ggml_backend_dev_t in = corral_worker_of_dev(dev)->inner;
    return in->iface.get_type(in);
}

static void corral_dev_get_props(ggml_backend_dev_t dev, struct ggml_backend_dev_props * props) {
    ggml_backend_dev_t in = corral_worker_of_dev(dev)->inner;
    in->iface.get_props(in, props);
    corral_dev_get_memory(dev, &props->memory_free, &props->memory_total);
}

static ggml_backend_t corral_dev_init_backend(ggml_backend_dev_t dev, const char * params) {
    ggml_backend_dev_t in = corral_worker_of_dev(dev)->inner;
    ggml_backend_t backend = in->iface.init_backend(in, params);
    if (backend != NULL) {
        /* the RPC server asks the backend's device for its buffer type and memory: make it us */
        backend->device = dev;
    }
    return backend;
}

static ggml_backend_buffer_type_t corral_dev_get_buffer_type(ggml_backend_dev_t dev) {
    return &corral_worker_of_dev(dev)->buft;
}

static ggml_backend_buffer_type_t corral_dev_get_host_buffer_type(ggml_backend_dev_t dev) {
    ggml_backend_dev_t in = corral_worker_of_dev(dev)->inner;
    return in->iface.get_host_buffer_type(in);
}

static bool corral_dev_supports_op(ggml_backend_dev_t dev, const struct ggml_tensor * op) {
    ggml_backend_dev_t in = corral_worker_of_dev(dev)->inner;
    return in->iface.supports_op(in, op);
}

static bool corral_dev_supports_buft(ggml_backend_dev_t dev, ggml_backend_buffer_type_t buft) {
    struct corral_worker_device * w = corral_worker_of_dev(dev);
    return w->inner->iface.supports_buft(w->inner, buft == &w->buft ? w->inner_buft : buft);
}

static bool corral_dev_offload_op(ggml_backend_dev_t dev, const struct ggml_tensor * op) {
    ggml_backend_dev_t in = corral_worker_of_dev(dev)->inner;
    return in->iface.offload_op(in, op);
}

static ggml_backend_event_t corral_dev_event_new(ggml_backend_dev_t dev) {
    ggml_backend_dev_t in = corral_worker_of_dev(dev)->inner;
    return in->iface.event_new(in);
}

static void corral_dev_event_free(ggml_backend_dev_t dev, ggml_backend_event_t event) {
    ggml_backend_dev_t in = corral_worker_of_dev(dev)->inner;
    in->iface.event_free(in, event);
}

static void corral_dev_event_synchronize(ggml_backend_dev_t dev, ggml_backend_event_t event) {
    ggml_backend_dev_t in = corral_worker_of_dev(dev)->inner;
    in->iface.event_synchronize(in, event);
}

/* ---- public --------------------------------------------------------------------------------- */

/* A device that stands for `inner` and offers at most `limit` bytes (0: no cap). Lives as long as
   the process (the RPC server never returns). NULL if the table is full or `inner` has no buffer type. */
ggml_backend_dev_t corral_worker_device(ggml_backend_dev_t inner, size_t limit) {
    if (inner == NULL || g_n_devices >= CORRAL_WORKER_MAX_DEVICES) {
        return NULL;
    }
    ggml_backend_buffer_type_t inner_buft = inner->iface.get_buffer_type(inner);
    if (inner_buft == NULL) {
        return NULL;
    }
    struct corral_worker_device * w = (struct corral_worker_device *) calloc(1, sizeof(*w));
    if (w == NULL) {
        return NULL;
    }
    w->inner = inner;
    w->inner_buft = inner_buft;
    w->limit = limit;

    struct ggml_backend_device_i di = inner->iface;  /* optional entries stay NULL where the real one's are */
    di.get_name = corral_dev_get_name;
    di.get_description = corral_dev_get_description;
    di.get_memory = corral_dev_get_memory;
    di.get_type = corral_dev_get_type;
    di.get_props = corral_dev_get_props;
    di.init_backend = corral_dev_init_backend;
    di.get_buffer_type = corral_dev_get_buffer_type;
    di.get_host_buffer_type = inner->iface.get_host_buffer_type ? corral_dev_get_host_buffer_type : NULL;
    di.buffer_from_host_ptr = NULL;  /* buffers made that way would escape the cap; the server never asks */
    di.supports_op = corral_dev_supports_op;
    di.supports_buft = corral_dev_supports_buft;
    di.offload_op = inner->iface.offload_op ? corral_dev_offload_op : NULL;
    di.event_new = inner->iface.event_new ? corral_dev_event_new : NULL;
    di.event_free = inner->iface.event_free ? corral_dev_event_free : NULL;
    di.event_synchronize = inner->iface.event_synchronize ? corral_dev_event_synchronize : NULL;
    w->dev.iface = di;
    w->dev.reg = inner->reg;  /* so the server finds the real backend's thread-count setter */
    w->dev.context = w;

    struct ggml_backend_buffer_type_i bi = inner_buft->iface;
    bi.get_name = corral_buft_get_name;
    bi.alloc_buffer = corral_buft_alloc_buffer;
    bi.get_alignment = corral_buft_get_alignment;
    bi.get_max_size = inner_buft->iface.get_max_size ? corral_buft_get_max_size : NULL;
    bi.get_alloc_size = inner_buft->iface.get_alloc_size ? corral_buft_get_alloc_size : NULL;
    bi.is_host = inner_buft->iface.is_host ? corral_buft_is_host : NULL;
    w->buft.iface = bi;
    w->buft.device = &w->dev;
    w->buft.context = w;

    g_devices[g_n_devices++] = w;
    return &w->dev;
}

/* What clients hold on a device made by corral_worker_device: bytes in use, the cap, and a bitmap of
   the model layers (blk.N) whose weights they wrote, `layers_size` bytes long (bit N = layer N). */
void corral_worker_device_usage(ggml_backend_dev_t dev, size_t * used, size_t * limit,
                                unsigned char * layers, size_t layers_size) {
    struct corral_worker_device * w = corral_worker_of_dev(dev);
    *used = corral_used(w);
    *limit = w->limit;
    for (size_t i = 0; i < layers_size; i++) {
        layers[i] = i < sizeof(w->layers) ? __atomic_load_n(&w->layers[i], __ATOMIC_SEQ_CST) : 0;
    }
}
