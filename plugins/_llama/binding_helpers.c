/* C helpers compiled into the binding (ffi_build.py). They exist where doing the work from Python
   would cost a call per element (batch filling) or would need the GIL on a hot path (the abort
   check). */
#include <math.h>
#include "llama.h"
#include "memfit.h"
#include "ggml-backend.h"
#include "mtmd.h"
#include "mtmd-helper.h"

#include <limits.h>
#include <string.h>

/* stb_image from the pinned tree (vendor/stb), private to this module. */
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_STDIO
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_GIF
#define STBI_ONLY_BMP
#include "stb/stb_image.h"

/* Fill a batch made by llama_batch_init(capacity, 0, 1): one sequence id per token. The capacity
   check keeps a bad caller from writing past llama.cpp's arrays (a heap overflow, not an error). */
int32_t corral_batch_fill(struct llama_batch * batch, int32_t capacity, const llama_token * tokens,
                          const llama_pos * pos, const llama_seq_id * seq, const int8_t * logits, int32_t n) {
    if (n < 0 || n > capacity) {
        return -1;
    }
    for (int32_t i = 0; i < n; i++) {
        batch->token[i] = tokens[i];
        batch->pos[i] = pos[i];
        batch->n_seq_id[i] = 1;
        batch->seq_id[i][0] = seq[i];
        batch->logits[i] = logits ? logits[i] : 0;
    }
    batch->n_tokens = n;
    return n;
}

/* Abort check without the GIL: data points at an int the Python side sets to non-zero. ggml calls
   this between graph nodes, so a Python callback here would take the GIL hundreds of times a token. */
bool corral_abort_flag(void * data) {
    return data != NULL && *(volatile int *) data != 0;
}

ggml_abort_callback corral_abort_flag_ptr(void) {
    return corral_abort_flag;
}

size_t corral_sizeof_model_params(void) { return sizeof(struct llama_model_params); }
size_t corral_sizeof_context_params(void) { return sizeof(struct llama_context_params); }
size_t corral_sizeof_batch(void) { return sizeof(struct llama_batch); }

/* Fill a batch made by llama_batch_init(capacity, n_embd, 1) with n embedding rows of one sequence at
   consecutive positions (an image's slice of mtmd output); logits only for the last row if asked. */
int32_t corral_batch_fill_embd(struct llama_batch * batch, int32_t capacity, int32_t n_embd,
                               const float * embd, llama_pos pos0, llama_seq_id seq, bool logits_last,
                               int32_t n) {
    if (n <= 0 || n > capacity || batch->embd == NULL) {
        return -1;
    }
    memcpy(batch->embd, embd, (size_t) n * (size_t) n_embd * sizeof(float));
    for (int32_t i = 0; i < n; i++) {
        batch->pos[i] = pos0 + i;
        batch->n_seq_id[i] = 1;
        batch->seq_id[i][0] = seq;
        batch->logits[i] = (logits_last && i == n - 1) ? 1 : 0;
    }
    batch->n_tokens = n;
    return n;
}

/* Encoded image bytes to an RGB mtmd bitmap with the very stb_image that mtmd_helper_bitmap_init_from_buf
   uses (so pixels match llama-server's), but only for PNG, JPEG, GIF and BMP, with the pixel count
   checked from the header before anything is decoded, and never the helper's fallback of handing
   undecodable bytes to ffmpeg. err: 1 not an image of those formats, 2 too many pixels, 3 damaged. */
mtmd_bitmap * corral_bitmap_from_image(const unsigned char * buf, size_t len, uint64_t max_pixels,
                                       int * err) {
    int nx = 0, ny = 0, nc = 0;
    *err = 0;
    if (len == 0 || len > (size_t) INT_MAX || !stbi_info_from_memory(buf, (int) len, &nx, &ny, &nc)) {
        *err = 1;
        return NULL;
    }
    /* stb's info reports a top-down BMP's height as negative (its loader takes the absolute value) */
    int64_t w = nx, h = ny < 0 ? -(int64_t) ny : ny;
    if (w <= 0 || h <= 0) {
        *err = 3;
        return NULL;
    }
    if ((uint64_t) w * (uint64_t) h > max_pixels) {
        *err = 2;
        return NULL;
    }
    unsigned char * data = stbi_load_from_memory(buf, (int) len, &nx, &ny, &nc, 3);
    if (data == NULL) {
        *err = 3;
        return NULL;
    }
    mtmd_bitmap * bitmap = mtmd_bitmap_init((uint32_t) nx, (uint32_t) ny, data);
    stbi_image_free(data);
    return bitmap;
}

const char * corral_image_failure_reason(void) {
    const char * reason = stbi_failure_reason();
    return reason ? reason : "";
}

/* The whole vocabulary as candidates, the grammar (if any) first, then the chain; the chosen token,
   not yet accepted by either (the caller accepts it), or -1. `buf` holds n_vocab entries. This is the
   slow path of constrained sampling: it runs only when the sampled token was not allowed. */
llama_token corral_sample_masked(struct llama_sampler * chain, struct llama_sampler * grammar,
                                 struct llama_context * ctx, int32_t idx, llama_token_data * buf,
                                 int32_t n_vocab) {
    const float * logits = llama_get_logits_ith(ctx, idx);
    if (logits == NULL) {
        return -1;
    }
    for (int32_t i = 0; i < n_vocab; i++) {
        buf[i].id = i;
        buf[i].logit = logits[i];
        buf[i].p = 0.0f;
    }
    llama_token_data_array arr = { buf, (size_t) n_vocab, -1, false };
    if (grammar != NULL) {
        llama_sampler_apply(grammar, &arr);
    }
    llama_sampler_apply(chain, &arr);
    if (arr.selected < 0 || (size_t) arr.selected >= arr.size) {
        return -1;
    }
    return arr.data[arr.selected].id;
}

/* The chain applied to the candidates `ids` only (a pre-selected or grammar-allowed subset of the
   vocabulary); the chosen token, not yet accepted, or -1. `buf` holds at least n entries. */
llama_token corral_sample_subset(struct llama_sampler * chain, struct llama_context * ctx, int32_t idx,
                                 const llama_token * ids, int32_t n, llama_token_data * buf) {
    const float * logits = llama_get_logits_ith(ctx, idx);
    if (logits == NULL || n <= 0) {
        return -1;
    }
    for (int32_t i = 0; i < n; i++) {
        buf[i].id = ids[i];
        buf[i].logit = logits[ids[i]];
        buf[i].p = 0.0f;
    }
    llama_token_data_array arr = { buf, (size_t) n, -1, false };
    llama_sampler_apply(chain, &arr);
    if (arr.selected < 0 || (size_t) arr.selected >= arr.size) {
        return -1;
    }
    return arr.data[arr.selected].id;
}

/* Whether the grammar allows `token` next: llama.cpp's own check of one sampled candidate. */
bool corral_grammar_allows(struct llama_sampler * grammar, llama_token token) {
    llama_token_data one = { token, 1.0f, 0.0f };
    llama_token_data_array arr = { &one, 1, -1, false };
    llama_sampler_apply(grammar, &arr);
    return one.logit != -INFINITY;
}

/* Every token's bytes, back to back, as llama.cpp's llguidance binding marks them: the plain piece,
   or 0xFF followed by the text of a special token (whose plain piece is empty). The piece comes from
   llama_token_to_piece, not llama_detokenize, which would drop a SentencePiece token's leading space.
   Returns the bytes written, or minus the capacity needed when `cap` is too small. */
int64_t corral_vocab_pieces(const struct llama_vocab * vocab, char * buf, int64_t cap, int32_t * lens) {
    int32_t n_vocab = llama_vocab_n_tokens(vocab);
    int64_t off = 0;
    char tmp[1024];
    for (int32_t i = 0; i < n_vocab; i++) {
        int32_t n = llama_token_to_piece(vocab, i, tmp + 1, (int32_t) sizeof(tmp) - 1, 0, false);
        int32_t start = 1;
        if (n == 0) {
            n = llama_token_to_piece(vocab, i, tmp + 1, (int32_t) sizeof(tmp) - 1, 0, true);
            if (n > 0) {
                tmp[0] = (char) 0xFF;
                start = 0;
                n += 1;
            }
        }
        if (n < 0) {
            n = 0;  /* longer than 1 KiB: no grammar needs such a token, treat it as unusable */
        }
        if (off + n <= cap) {
            for (int32_t k = 0; k < n; k++) {
                buf[off + k] = tmp[start + k];
            }
        }
        lens[i] = n;
        off += n;
    }
    return off <= cap ? off : -off;
}
