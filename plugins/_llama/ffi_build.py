"""Build the out-of-line API-mode cffi extension that binds llama.cpp's C API (stdlib + cffi only)."""

from __future__ import annotations

import argparse
import sys
import sysconfig
import tempfile
from pathlib import Path

import cffi

STABLE_ABI = not sysconfig.get_config_var("Py_GIL_DISABLED")

# The declarations corral uses. API mode lets the C compiler check every one of them against the
# pinned llama.h, so partial structs (`...;`) and enums (`...`) take their layout from the header:
# a field added or moved upstream cannot silently shift our view of a struct.
CDEF = r"""
typedef int32_t llama_pos;
typedef int32_t llama_token;
typedef int32_t llama_seq_id;

struct llama_model;
struct llama_context;
struct llama_vocab;
struct llama_sampler;
struct llama_adapter_lora;
typedef struct llama_memory_i * llama_memory_t;

/* ---- ggml: logging, types, backends ------------------------------------------------------- */
enum ggml_log_level {
    GGML_LOG_LEVEL_NONE, GGML_LOG_LEVEL_DEBUG, GGML_LOG_LEVEL_INFO, GGML_LOG_LEVEL_WARN,
    GGML_LOG_LEVEL_ERROR, GGML_LOG_LEVEL_CONT, ...
};
typedef void (*ggml_log_callback)(enum ggml_log_level level, const char * text, void * user_data);
typedef bool (*ggml_abort_callback)(void * data);

enum ggml_type {
    GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1,
    GGML_TYPE_Q8_0, GGML_TYPE_Q4_K, GGML_TYPE_Q6_K, GGML_TYPE_BF16, ...
};

typedef struct ggml_backend_reg * ggml_backend_reg_t;
typedef struct ggml_backend_device * ggml_backend_dev_t;

enum ggml_backend_dev_type {
    GGML_BACKEND_DEVICE_TYPE_CPU, GGML_BACKEND_DEVICE_TYPE_GPU, GGML_BACKEND_DEVICE_TYPE_IGPU,
    GGML_BACKEND_DEVICE_TYPE_ACCEL, ...
};

ggml_backend_reg_t ggml_backend_load(const char * path);
void               ggml_backend_unload(ggml_backend_reg_t reg);
void               ggml_backend_load_all_from_path(const char * dir_path);
size_t             ggml_backend_reg_count(void);
ggml_backend_reg_t ggml_backend_reg_get(size_t index);
ggml_backend_reg_t ggml_backend_reg_by_name(const char * name);
const char *       ggml_backend_reg_name(ggml_backend_reg_t reg);
size_t             ggml_backend_reg_dev_count(ggml_backend_reg_t reg);
ggml_backend_dev_t ggml_backend_reg_dev_get(ggml_backend_reg_t reg, size_t index);
void *             ggml_backend_reg_get_proc_address(ggml_backend_reg_t reg, const char * name);
size_t             ggml_backend_dev_count(void);
ggml_backend_dev_t ggml_backend_dev_get(size_t index);
ggml_backend_dev_t ggml_backend_dev_by_name(const char * name);
ggml_backend_dev_t ggml_backend_dev_by_type(enum ggml_backend_dev_type type);
const char *       ggml_backend_dev_name(ggml_backend_dev_t device);
const char *       ggml_backend_dev_description(ggml_backend_dev_t device);
void               ggml_backend_dev_memory(ggml_backend_dev_t device, size_t * free, size_t * total);
enum ggml_backend_dev_type ggml_backend_dev_type(ggml_backend_dev_t device);
ggml_backend_reg_t ggml_backend_dev_backend_reg(ggml_backend_dev_t device);
void               ggml_backend_register(ggml_backend_reg_t reg);

/* llama.cpp's RPC backend (libggml-rpc, a loaded module): its entry points come from
   ggml_backend_reg_get_proc_address on the "RPC" registry and are cast to these types. */
typedef ggml_backend_reg_t (*corral_rpc_add_server_t)(const char * endpoint);
typedef void (*corral_rpc_start_server_t)(const char * endpoint, const char * cache_dir, size_t n_threads,
                                          size_t n_devices, ggml_backend_dev_t * devices);

/* ---- llama enums ---------------------------------------------------------------------------- */
enum llama_ftype {
    LLAMA_FTYPE_ALL_F32, LLAMA_FTYPE_MOSTLY_F16, LLAMA_FTYPE_MOSTLY_Q4_0, LLAMA_FTYPE_MOSTLY_Q8_0,
    LLAMA_FTYPE_MOSTLY_Q4_K_S, LLAMA_FTYPE_MOSTLY_Q4_K_M, LLAMA_FTYPE_MOSTLY_BF16,
    LLAMA_FTYPE_GUESSED, ...
};
enum llama_pooling_type {
    LLAMA_POOLING_TYPE_UNSPECIFIED, LLAMA_POOLING_TYPE_NONE, LLAMA_POOLING_TYPE_MEAN,
    LLAMA_POOLING_TYPE_CLS, LLAMA_POOLING_TYPE_LAST, LLAMA_POOLING_TYPE_RANK, ...
};
enum llama_attention_type {
    LLAMA_ATTENTION_TYPE_UNSPECIFIED, LLAMA_ATTENTION_TYPE_CAUSAL, LLAMA_ATTENTION_TYPE_NON_CAUSAL, ...
};
enum llama_flash_attn_type {
    LLAMA_FLASH_ATTN_TYPE_AUTO, LLAMA_FLASH_ATTN_TYPE_DISABLED, LLAMA_FLASH_ATTN_TYPE_ENABLED, ...
};
enum llama_split_mode {
    LLAMA_SPLIT_MODE_NONE, LLAMA_SPLIT_MODE_LAYER, LLAMA_SPLIT_MODE_ROW, ...
};
enum llama_load_mode {
    LLAMA_LOAD_MODE_AUTO, LLAMA_LOAD_MODE_NONE, LLAMA_LOAD_MODE_MMAP, LLAMA_LOAD_MODE_MLOCK, ...
};
enum llama_vocab_type { LLAMA_VOCAB_TYPE_NONE, LLAMA_VOCAB_TYPE_SPM, LLAMA_VOCAB_TYPE_BPE, ... };

/* ---- llama structs (partial: the compiler fills in the layout) ------------------------------ */
typedef struct llama_token_data {
    llama_token id;
    float logit;
    float p;
} llama_token_data;

typedef struct llama_token_data_array {
    llama_token_data * data;
    size_t size;
    int64_t selected;
    bool sorted;
} llama_token_data_array;

typedef bool (*llama_progress_callback)(float progress, void * user_data);

typedef struct llama_batch {
    int32_t n_tokens;
    llama_token  *  token;
    float        *  embd;
    llama_pos    *  pos;
    int32_t      *  n_seq_id;
    llama_seq_id ** seq_id;
    int8_t       *  logits;
} llama_batch;

struct llama_model_tensor_buft_override { const char * pattern; ...; };

struct llama_model_params {
    ggml_backend_dev_t * devices;
    const struct llama_model_tensor_buft_override * tensor_buft_overrides;
    int32_t n_gpu_layers;
    enum llama_split_mode split_mode;
    enum llama_load_mode load_mode;
    int32_t main_gpu;
    const float * tensor_split;
    llama_progress_callback progress_callback;
    void * progress_callback_user_data;
    bool vocab_only;
    bool check_tensors;
    bool use_extra_bufts;
    bool no_host;
    bool no_alloc;
    ...;
};

struct llama_context_params {
    uint32_t n_ctx;
    uint32_t n_batch;
    uint32_t n_ubatch;
    uint32_t n_seq_max;
    uint32_t n_outputs_max;
    int32_t  n_threads;
    int32_t  n_threads_batch;
    enum llama_pooling_type pooling_type;
    enum llama_attention_type attention_type;
    enum llama_flash_attn_type flash_attn_type;
    enum ggml_type type_k;
    enum ggml_type type_v;
    ggml_abort_callback abort_callback;
    void * abort_callback_data;
    bool embeddings;
    bool offload_kqv;
    bool no_perf;
    bool op_offload;
    bool swa_full;
    bool kv_unified;
    ...;
};

typedef struct llama_model_quantize_params {
    int32_t nthread;
    enum llama_ftype ftype;
    enum ggml_type output_tensor_type;
    enum ggml_type token_embedding_type;
    bool allow_requantize;
    bool quantize_output_tensor;
    bool only_copy;
    bool pure;
    bool keep_split;
    bool dry_run;
    ...;
} llama_model_quantize_params;

typedef struct llama_logit_bias {
    llama_token token;
    float bias;
} llama_logit_bias;

typedef struct llama_sampler_chain_params {
    bool no_perf;
} llama_sampler_chain_params;

struct llama_perf_context_data {
    double t_start_ms;
    double t_load_ms;
    double t_p_eval_ms;
    double t_eval_ms;
    int32_t n_p_eval;
    int32_t n_eval;
    int32_t n_reused;
    ...;
};

/* ---- init, models, contexts ----------------------------------------------------------------- */
const char * llama_version(void);
struct llama_model_params          llama_model_default_params(void);
struct llama_context_params        llama_context_default_params(void);
struct llama_sampler_chain_params  llama_sampler_chain_default_params(void);
struct llama_model_quantize_params llama_model_quantize_default_params(void);
void llama_backend_init(void);
void llama_backend_free(void);
const char * llama_print_system_info(void);
size_t llama_max_devices(void);
size_t llama_max_parallel_sequences(void);
bool llama_supports_mmap(void);
bool llama_supports_gpu_offload(void);
const char * llama_ftype_name(enum llama_ftype ftype);

struct llama_model * llama_model_load_from_file(const char * path_model, struct llama_model_params params);
void llama_model_free(struct llama_model * model);
struct llama_context * llama_init_from_model(struct llama_model * model, struct llama_context_params params);
void llama_free(struct llama_context * ctx);

uint32_t llama_n_ctx(const struct llama_context * ctx);
uint32_t llama_n_ctx_seq(const struct llama_context * ctx);
uint32_t llama_n_batch(const struct llama_context * ctx);
uint32_t llama_n_ubatch(const struct llama_context * ctx);
uint32_t llama_n_seq_max(const struct llama_context * ctx);
const struct llama_model * llama_get_model(const struct llama_context * ctx);
llama_memory_t llama_get_memory(const struct llama_context * ctx);
enum llama_pooling_type llama_pooling_type(const struct llama_context * ctx);
void llama_set_n_threads(struct llama_context * ctx, int32_t n_threads, int32_t n_threads_batch);
void llama_set_embeddings(struct llama_context * ctx, bool embeddings);
void llama_set_causal_attn(struct llama_context * ctx, bool causal_attn);
void llama_set_abort_callback(struct llama_context * ctx, ggml_abort_callback abort_callback,
                              void * abort_callback_data);
void llama_synchronize(struct llama_context * ctx);

/* ---- model metadata ------------------------------------------------------------------------- */
const struct llama_vocab * llama_model_get_vocab(const struct llama_model * model);
int32_t llama_model_n_ctx_train(const struct llama_model * model);
int32_t llama_model_n_embd(const struct llama_model * model);
int32_t llama_model_n_embd_out(const struct llama_model * model);
int32_t llama_model_n_embd_inp(const struct llama_model * model);
int32_t llama_model_n_layer(const struct llama_model * model);
int32_t llama_model_n_head(const struct llama_model * model);
int32_t llama_model_n_head_kv(const struct llama_model * model);
int32_t llama_model_n_swa(const struct llama_model * model);
uint32_t llama_model_n_cls_out(const struct llama_model * model);
int32_t llama_model_meta_val_str(const struct llama_model * model, const char * key, char * buf,
                                 size_t buf_size);
int32_t llama_model_meta_count(const struct llama_model * model);
int32_t llama_model_meta_key_by_index(const struct llama_model * model, int32_t i, char * buf,
                                      size_t buf_size);
int32_t llama_model_meta_val_str_by_index(const struct llama_model * model, int32_t i, char * buf,
                                          size_t buf_size);
int32_t llama_model_desc(const struct llama_model * model, char * buf, size_t buf_size);
enum llama_ftype llama_model_ftype(const struct llama_model * model);
uint64_t llama_model_size(const struct llama_model * model);
const char * llama_model_chat_template(const struct llama_model * model, const char * name);
uint64_t llama_model_n_params(const struct llama_model * model);
bool llama_model_has_encoder(const struct llama_model * model);
bool llama_model_has_decoder(const struct llama_model * model);
llama_token llama_model_decoder_start_token(const struct llama_model * model);
bool llama_model_is_recurrent(const struct llama_model * model);
bool llama_model_is_hybrid(const struct llama_model * model);

/* ---- quantization and LoRA ------------------------------------------------------------------ */
uint32_t llama_model_quantize(const char * fname_inp, const char * fname_out,
                              const llama_model_quantize_params * params);
struct llama_adapter_lora * llama_adapter_lora_init(struct llama_model * model, const char * path_lora);
void llama_adapter_lora_free(struct llama_adapter_lora * adapter);
int32_t llama_set_adapters_lora(struct llama_context * ctx, struct llama_adapter_lora ** adapters,
                                size_t n_adapters, float * scales);

/* ---- memory (KV cache) ---------------------------------------------------------------------- */
void llama_memory_clear(llama_memory_t mem, bool data);
bool llama_memory_seq_rm(llama_memory_t mem, llama_seq_id seq_id, llama_pos p0, llama_pos p1);
void llama_memory_seq_cp(llama_memory_t mem, llama_seq_id seq_id_src, llama_seq_id seq_id_dst,
                         llama_pos p0, llama_pos p1);
void llama_memory_seq_keep(llama_memory_t mem, llama_seq_id seq_id);
void llama_memory_seq_add(llama_memory_t mem, llama_seq_id seq_id, llama_pos p0, llama_pos p1,
                          llama_pos delta);
llama_pos llama_memory_seq_pos_min(llama_memory_t mem, llama_seq_id seq_id);
llama_pos llama_memory_seq_pos_max(llama_memory_t mem, llama_seq_id seq_id);
bool llama_memory_can_shift(llama_memory_t mem);

/* ---- batches, decode, outputs --------------------------------------------------------------- */
struct llama_batch llama_batch_get_one(llama_token * tokens, int32_t n_tokens);
struct llama_batch llama_batch_init(int32_t n_tokens, int32_t embd, int32_t n_seq_max);
void llama_batch_free(struct llama_batch batch);
int32_t llama_encode(struct llama_context * ctx, struct llama_batch batch);
int32_t llama_decode(struct llama_context * ctx, struct llama_batch batch);
float * llama_get_logits(struct llama_context * ctx);
float * llama_get_logits_ith(struct llama_context * ctx, int32_t i);
float * llama_get_embeddings(struct llama_context * ctx);
float * llama_get_embeddings_ith(struct llama_context * ctx, int32_t i);
float * llama_get_embeddings_seq(struct llama_context * ctx, llama_seq_id seq_id);

/* ---- vocab and tokenization ----------------------------------------------------------------- */
enum llama_vocab_type llama_vocab_type(const struct llama_vocab * vocab);
int32_t llama_vocab_n_tokens(const struct llama_vocab * vocab);
const char * llama_vocab_get_text(const struct llama_vocab * vocab, llama_token token);
bool llama_vocab_is_eog(const struct llama_vocab * vocab, llama_token token);
bool llama_vocab_is_control(const struct llama_vocab * vocab, llama_token token);
llama_token llama_vocab_bos(const struct llama_vocab * vocab);
llama_token llama_vocab_eos(const struct llama_vocab * vocab);
llama_token llama_vocab_eot(const struct llama_vocab * vocab);
llama_token llama_vocab_sep(const struct llama_vocab * vocab);
llama_token llama_vocab_nl(const struct llama_vocab * vocab);
llama_token llama_vocab_pad(const struct llama_vocab * vocab);
bool llama_vocab_get_add_bos(const struct llama_vocab * vocab);
bool llama_vocab_get_add_eos(const struct llama_vocab * vocab);
bool llama_vocab_get_add_sep(const struct llama_vocab * vocab);
llama_token llama_vocab_fim_pre(const struct llama_vocab * vocab);
llama_token llama_vocab_fim_suf(const struct llama_vocab * vocab);
llama_token llama_vocab_fim_mid(const struct llama_vocab * vocab);
int32_t llama_tokenize(const struct llama_vocab * vocab, const char * text, int32_t text_len,
                       llama_token * tokens, int32_t n_tokens_max, bool add_special, bool parse_special);
int32_t llama_token_to_piece(const struct llama_vocab * vocab, llama_token token, char * buf,
                             int32_t length, int32_t lstrip, bool special);
int32_t llama_detokenize(const struct llama_vocab * vocab, const llama_token * tokens, int32_t n_tokens,
                         char * text, int32_t text_len_max, bool remove_special, bool unparse_special);

/* ---- sampling ------------------------------------------------------------------------------- */
const char * llama_sampler_name(const struct llama_sampler * smpl);
void llama_sampler_accept(struct llama_sampler * smpl, llama_token token);
void llama_sampler_apply(struct llama_sampler * smpl, llama_token_data_array * cur_p);
void llama_sampler_reset(struct llama_sampler * smpl);
struct llama_sampler * llama_sampler_clone(const struct llama_sampler * smpl);
void llama_sampler_free(struct llama_sampler * smpl);
struct llama_sampler * llama_sampler_chain_init(struct llama_sampler_chain_params params);
void llama_sampler_chain_add(struct llama_sampler * chain, struct llama_sampler * smpl);
struct llama_sampler * llama_sampler_chain_get(struct llama_sampler * chain, int32_t i);
int32_t llama_sampler_chain_n(const struct llama_sampler * chain);
struct llama_sampler * llama_sampler_init_greedy(void);
struct llama_sampler * llama_sampler_init_dist(uint32_t seed);
struct llama_sampler * llama_sampler_init_top_k(int32_t k);
struct llama_sampler * llama_sampler_init_top_p(float p, size_t min_keep);
struct llama_sampler * llama_sampler_init_min_p(float p, size_t min_keep);
struct llama_sampler * llama_sampler_init_typical(float p, size_t min_keep);
struct llama_sampler * llama_sampler_init_temp(float t);
struct llama_sampler * llama_sampler_init_temp_ext(float t, float delta, float exponent);
struct llama_sampler * llama_sampler_init_mirostat_v2(uint32_t seed, float tau, float eta);
struct llama_sampler * llama_sampler_init_grammar(const struct llama_vocab * vocab, const char * grammar_str,
                                                  const char * grammar_root);
struct llama_sampler * llama_sampler_init_grammar_lazy_patterns(
    const struct llama_vocab * vocab, const char * grammar_str, const char * grammar_root,
    const char ** trigger_patterns, size_t num_trigger_patterns,
    const llama_token * trigger_tokens, size_t num_trigger_tokens);
struct llama_sampler * llama_sampler_init_penalties(int32_t n_vocab, int32_t penalty_last_n,
                                                    float penalty_repeat,
                                                    float penalty_freq, float penalty_present);
struct llama_sampler * llama_sampler_init_logit_bias(int32_t n_vocab, int32_t n_logit_bias,
                                                     const llama_logit_bias * logit_bias);
uint32_t llama_sampler_get_seed(const struct llama_sampler * smpl);
llama_token llama_sampler_sample(struct llama_sampler * smpl, struct llama_context * ctx, int32_t idx);

/* ---- logging, perf -------------------------------------------------------------------------- */
void llama_log_set(ggml_log_callback log_callback, void * user_data);
struct llama_perf_context_data llama_perf_context(const struct llama_context * ctx);
void llama_perf_context_reset(struct llama_context * ctx);

/* ---- Python callbacks (defined with @ffi.def_extern in plugins/_llama) ---------------------- */
extern "Python" void corral_log_cb(enum ggml_log_level level, const char * text, void * user_data);
extern "Python" bool corral_progress_cb(float progress, void * user_data);

/* ---- libmtmd: projectors, media bitmaps, text + media chunks (tools/mtmd/mtmd.h) --------- */
enum mtmd_input_chunk_type {
    MTMD_INPUT_CHUNK_TYPE_TEXT, MTMD_INPUT_CHUNK_TYPE_IMAGE, MTMD_INPUT_CHUNK_TYPE_AUDIO, ...
};
typedef struct mtmd_context mtmd_context;
typedef struct mtmd_bitmap mtmd_bitmap;
typedef struct mtmd_input_chunk mtmd_input_chunk;
typedef struct mtmd_input_chunks mtmd_input_chunks;
typedef struct mtmd_input_text {
    const char * text;
    size_t text_len;
    bool add_special;
    bool parse_special;
} mtmd_input_text;
struct mtmd_context_params {
    bool use_gpu;
    ggml_backend_dev_t device;
    bool print_timings;
    int n_threads;
    const char * media_marker;
    enum llama_flash_attn_type flash_attn_type;
    bool warmup;
    int image_min_tokens;
    int image_max_tokens;
    int32_t batch_max_tokens;
    ...;
};

const char * mtmd_default_marker(void);
struct mtmd_context_params mtmd_context_params_default(void);
mtmd_context * mtmd_init_from_file(const char * mmproj_fname, const struct llama_model * text_model,
                                   const struct mtmd_context_params ctx_params);
void mtmd_free(mtmd_context * ctx);
bool mtmd_decode_use_non_causal(const mtmd_context * ctx, const mtmd_input_chunk * chunk);
bool mtmd_decode_use_mrope(const mtmd_context * ctx);
bool mtmd_support_vision(const mtmd_context * ctx);

void mtmd_bitmap_free(mtmd_bitmap * bitmap);
void mtmd_bitmap_set_id(mtmd_bitmap * bitmap, const char * id);

mtmd_input_chunks * mtmd_input_chunks_init(void);
size_t mtmd_input_chunks_size(const mtmd_input_chunks * chunks);
const mtmd_input_chunk * mtmd_input_chunks_get(const mtmd_input_chunks * chunks, size_t idx);
void mtmd_input_chunks_free(mtmd_input_chunks * chunks);
enum mtmd_input_chunk_type mtmd_input_chunk_get_type(const mtmd_input_chunk * chunk);
const llama_token * mtmd_input_chunk_get_tokens_text(const mtmd_input_chunk * chunk, size_t * n_tokens);
size_t mtmd_input_chunk_get_n_tokens(const mtmd_input_chunk * chunk);
llama_pos mtmd_input_chunk_get_n_pos(const mtmd_input_chunk * chunk);
mtmd_input_chunk * mtmd_input_chunk_copy(const mtmd_input_chunk * chunk);
void mtmd_input_chunk_free(mtmd_input_chunk * chunk);

int32_t mtmd_tokenize(const mtmd_context * ctx, mtmd_input_chunks * output, const mtmd_input_text * text,
                      const mtmd_bitmap * const * bitmaps, size_t n_bitmaps);
int32_t mtmd_encode_chunk(mtmd_context * ctx, const mtmd_input_chunk * chunk);
float * mtmd_get_output_embd(mtmd_context * ctx);

void mtmd_helper_log_set(ggml_log_callback log_callback, void * user_data);

/* ---- corral's C helpers --------------------------------------------------------------------- */
int32_t corral_batch_fill(struct llama_batch * batch, int32_t capacity, const llama_token * tokens,
                          const llama_pos * pos, const llama_seq_id * seq, const int8_t * logits, int32_t n);
bool corral_abort_flag(void * data);
ggml_abort_callback corral_abort_flag_ptr(void);
size_t corral_sizeof_model_params(void);
size_t corral_sizeof_context_params(void);
size_t corral_sizeof_batch(void);
int32_t corral_batch_fill_embd(struct llama_batch * batch, int32_t capacity, int32_t n_embd,
                               const float * embd, llama_pos pos0, llama_seq_id seq, bool logits_last,
                               int32_t n);
mtmd_bitmap * corral_bitmap_from_image(const unsigned char * buf, size_t len, uint64_t max_pixels, int * err);
const char * corral_image_failure_reason(void);
llama_token corral_sample_masked(struct llama_sampler * chain, struct llama_sampler * grammar,
                                 struct llama_context * ctx, int32_t idx, llama_token_data * buf,
                                 int32_t n_vocab);
llama_token corral_sample_subset(struct llama_sampler * chain, struct llama_context * ctx, int32_t idx,
                                 const llama_token * ids, int32_t n, llama_token_data * buf);
bool corral_grammar_allows(struct llama_sampler * grammar, llama_token token);
int64_t corral_vocab_pieces(const struct llama_vocab * vocab, char * buf, int64_t cap, int32_t * lens);

/* ---- memory per device and llama.cpp's fit (memfit.cpp) ------------------------------------- */
struct corral_device_memory {
    char name[128];
    int32_t type;
    uint64_t model;
    uint64_t context;
    uint64_t compute;
    uint64_t free;
    uint64_t total;
};
size_t llama_max_tensor_buft_overrides(void);
int32_t corral_context_memory(const struct llama_context * ctx, struct corral_device_memory * out,
                              int32_t cap);
int32_t corral_measure(const char * path, const struct llama_model_params * mparams,
                       const struct llama_context_params * cparams, struct corral_device_memory * out,
                       int32_t cap, int32_t * n_layer);
int32_t corral_fit(const char * path, struct llama_model_params * mparams,
                   struct llama_context_params * cparams, float * tensor_split,
                   struct llama_model_tensor_buft_override * overrides, size_t * margins);
int32_t corral_projector_memory(const char * path, const struct mtmd_context_params * params,
                                struct corral_device_memory * out, int32_t cap);

/* ---- the RPC worker's device (rpc_worker.c) ------------------------------------------------- */
ggml_backend_dev_t corral_worker_device(ggml_backend_dev_t inner, size_t limit);
void corral_worker_device_usage(ggml_backend_dev_t dev, size_t * used, size_t * limit,
                                unsigned char * layers, size_t layers_size);
"""

# C helpers compiled into the module. They exist where doing the work from Python would cost a
# call per element (batch filling) or would need the GIL on a hot path (the abort check).
C_SOURCE = r"""
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
"""

# The RPC worker's device wrapper, C kept in its own file (it is compiled into the same module).
WORKER_C = Path(__file__).with_name("rpc_worker.c")
# llama.cpp's memory breakdown and fit are C++ (common/fit.h, src/llama-ext.h): a C++ file with a C
# interface (memfit.h), compiled and linked into the module with libllama-common-fit (fit.cpp and what it
# calls of libllama-common: cmake/corral-hooks.cmake).
MEMFIT_CPP = Path(__file__).with_name("memfit.cpp")


def make_builder(module_name: str, include_dirs: list[str], lib_dir: str) -> cffi.FFI:
    """The configured FFI builder (exposed so tests can inspect the cdef without compiling)."""
    ffibuilder = cffi.FFI()
    ffibuilder.cdef(CDEF)
    extra_link_args = ["-Wl,-rpath,$ORIGIN"] if sys.platform != "darwin" else ["-Wl,-rpath,@loader_path"]
    dirs = [Path(d).resolve() for d in include_dirs]
    # rpc_worker.c needs ggml's internal device interfaces (ggml/src next to ggml/include).
    dirs += [d.parent / "src" for d in dirs if (d.parent / "src" / "ggml-backend-impl.h").is_file()]
    # memfit.cpp needs common/fit.h and src/llama-ext.h beside include/llama.h, and memfit.h here.
    dirs += [d.parent / sub for d in dirs if (d / "llama.h").is_file() for sub in ("common", "src")]
    dirs.append(MEMFIT_CPP.parent)
    ffibuilder.set_source(
        module_name,
        C_SOURCE + "\n" + WORKER_C.read_text(),
        sources=[str(MEMFIT_CPP)],
        include_dirs=[str(d) for d in dirs],
        libraries=["mtmd", "llama-common-fit", "llama", "ggml", "ggml-base"],
        library_dirs=[str(Path(lib_dir).resolve())],
        extra_link_args=extra_link_args,
        # Python's stable ABI: one module (``_llama_cpu.abi3.so``) serves every CPython >= 3.10, so a
        # wheel is built once per platform (free-threaded builds have no stable ABI before 3.15).
        py_limited_api=STABLE_ABI,
        define_macros=[("Py_LIMITED_API", "0x030A0000")] if STABLE_ABI else [],
    )
    return ffibuilder


def compile_module(module_name: str, include_dirs: list[str], lib_dir: str, out_dir: str) -> Path:
    """Compile ``module_name`` against the headers in ``include_dirs`` (llama.h, ggml's headers and
    tools/mtmd's mtmd.h), linked to the libmtmd/libllama/libggml in ``lib_dir``, and place the extension
    in ``out_dir``.

    Returns the path of the built extension (e.g. ``out_dir/_llama_cpu.cpython-311-x86_64-linux-gnu.so``).
    The module's rpath is $ORIGIN, so ``out_dir`` should be the folder that holds the libraries.
    """
    for d in include_dirs:
        if not any((Path(d) / h).is_file() for h in ("llama.h", "ggml.h", "mtmd.h", "stb/stb_image.h")):
            raise FileNotFoundError(f"{d} holds none of llama.h, ggml.h, mtmd.h, stb/stb_image.h")
    if not any((Path(d) / "llama.h").is_file() for d in include_dirs):
        raise FileNotFoundError(f"llama.h not found in any of {include_dirs}")
    if not list(Path(lib_dir).glob("libllama.*")):
        raise FileNotFoundError(f"libllama not found in {lib_dir}")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    builder = make_builder(module_name, include_dirs, lib_dir)
    # Temporary build files stay out of the source tree and out of the library folder.
    with tempfile.TemporaryDirectory(prefix="corral-ffi-") as tmp:
        built = Path(builder.compile(tmpdir=tmp, verbose=False))
        target = out / built.name
        target.write_bytes(built.read_bytes())
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Compile corral's cffi binding to llama.cpp.")
    ap.add_argument("--module", required=True, help="module name, e.g. _llama_cpu")
    ap.add_argument("--lib-dir", required=True, help="folder with libllama/libggml/libggml-base")
    ap.add_argument("--include", action="append", required=True,
                    help="header folder (repeat: include, ggml/include, tools/mtmd, vendor)")
    ap.add_argument("--out", required=True, help="folder that receives the extension module")
    args = ap.parse_args(argv)
    path = compile_module(args.module, args.include, args.lib_dir, args.out)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
