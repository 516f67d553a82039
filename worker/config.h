/* Configuration of the worker and the trainer: a YAML file (libyaml), then BERTSTREAM_* environment
 * variables, then `-o section.key=value` overrides, all checked against one table of keys (type, bounds,
 * default, target field). Every error is one line naming the place (FILE:LINE, the variable or the -o)
 * and the key. docs/configuration.md lists every key. */
#ifndef BS_CONFIG_H
#define BS_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common.h"
#include "engine.h" /* bs_feature, bs_precision */
#include "log.h"    /* bs_log_level */

/* A free-form string -> string map (librdkafka properties), in insertion order. Setting an
 * existing key replaces its value in place, so a later source overrides an earlier one. */
typedef struct {
    char *key;
    char *value;
} bs_kv;

typedef struct {
    bs_kv *items;
    size_t n, cap;
} bs_kvlist;

/* Enum keys are stored as these C enums; their order is the order of the names in the table. */
typedef enum { BS_FORMAT_AVRO, BS_FORMAT_CONFLUENT, BS_FORMAT_JSON, BS_FORMAT_TEXT } bs_format;
typedef enum { BS_DELIVERY_AT_LEAST_ONCE, BS_DELIVERY_EXACTLY_ONCE } bs_delivery;
typedef enum { BS_LOG_FORMAT_LOGFMT, BS_LOG_FORMAT_JSON } bs_log_format;

/* Every field is valid after config_new_defaults() and stays within its bounds: the loaders reject
 * anything else. Strings are heap-owned by the config (never NULL; "" where the doc says so). */
typedef struct bs_config {
    bs_kvlist kafka;    /* librdkafka properties for both clients, e.g. bootstrap.servers */
    bs_kvlist consumer; /* consumer-only properties; group.id defaults to "bertstream" */
    bs_kvlist producer; /* producer-only properties */
    struct {
        char *input;       /* reviews */
        char *output;      /* review-scores */
        char *dead_letter; /* reviews-dlq */
        char *heads;       /* bertstream-heads; "" = no hot swap (head.file only) */
        char *labeled;     /* reviews-labeled (trainer input) */
    } topics;
    struct {
        bs_format input;          /* avro | confluent | json | text (default avro) */
        bs_format output;         /* avro | confluent (default avro) */
        int64_t input_schema_id;  /* 1: the only schema id accepted in confluent-framed input */
        int64_t output_schema_id; /* 2: written into confluent-framed output */
    } format;
    struct {
        char *dir;              /* models/bert-base-uncased */
        char *vocab;            /* "" = <dir>/vocab.txt (see config_vocab_path) */
        int64_t max_seq_len;    /* 128, 2..8192 */
        bs_feature feature;     /* pooler | cls | mean */
        char *device;           /* auto | cpu | cuda | cuda:N (checked) */
        bs_precision precision; /* auto | fp32 | fp16 | bf16 | fp8 */
    } model;
    struct {
        char *file;      /* models/head.safetensors; "" = start without a head file */
        char *hmac_key;  /* "" = heads are not signature-checked. SECRET: never log it */
        int64_t wait_ms; /* 0: at start, wait this long for a head on topics.heads before head.file */
    } head;
    struct {
        int64_t max_sequences; /* 256, 1..65536 */
        int64_t max_tokens;    /* 32768, 2..1048576; at least model.max_seq_len */
        int64_t max_delay_ms;  /* 20, 0..60000 */
    } batch;
    struct {
        char *listen; /* "0.0.0.0:9464"; "" = no HTTP server; port 0 = ephemeral */
    } http;
    bs_delivery delivery; /* top-level scalar key: at_least_once | exactly_once */
    struct {
        int64_t tokenizer_threads; /* 2, 1..64 */
        int64_t max_message_bytes; /* 16777216: larger input values are dead letters */
        int64_t queue_depth;       /* 4096: messages buffered between consumer and batcher */
    } worker;
    struct {
        bs_log_level level;   /* debug | info | warn | error */
        bs_log_format format; /* logfmt | json */
    } log;
    struct {
        bs_feature feature;      /* pooler */
        double eval_fraction;    /* 0.1, 0..0.9: share of the labeled data held out for evaluation */
        double max_regression;   /* 0.01, 0..1: largest accuracy drop vs the current head that still publishes */
        int64_t epochs;          /* 10 */
        int64_t batch;           /* 16 */
        double lr;               /* 2e-4 */
        double weight_decay;     /* 0.01 */
        int64_t seed;            /* 0 */
        char *cache_dir;         /* cache/features */
        char *out_dir;           /* out/heads */
        int64_t read_timeout_ms; /* 30000: stop reading the labeled topic after this long without a message */
    } train;
} bs_config;

/* A config holding every default. NULL only when out of memory. */
bs_config *config_new_defaults(void);
void config_free(bs_config *c);

/* Applies a YAML file on top of c. Errors: "FILE:LINE: unknown key 'batch.foo'",
 * "FILE:LINE: batch.max_sequences: expected an integer in 1..65536, got 'abc'", YAML syntax errors with
 * line and column. On error c may hold some of the file's values: discard it. */
int config_load_file(bs_config *c, const char *path, char *err);
/* Same for YAML text in memory; name stands for the file name in messages. */
int config_load_string(bs_config *c, const char *yaml, size_t len, const char *name, char *err);

/* Applies BERTSTREAM_<SECTION>_<KEY>=value variables from envp (NULL-terminated; NULL = environ).
 * Scalar keys: BERTSTREAM_BATCH_MAX_SEQUENCES, BERTSTREAM_DELIVERY. Maps: BERTSTREAM_KAFKA_SASL_PASSWORD ->
 * kafka "sasl.password" (the rest lower-cased, '_' -> '.'). Variables whose part after BERTSTREAM_ does not
 * start with a section name (BERTSTREAM_DATA...) are ignored, and so are Kubernetes service links
 * (BERTSTREAM_<SECTION>_PORT, _PORT_*, _SERVICE_HOST*, _SERVICE_PORT*, e.g. from a Service named
 * bertstream-worker); any other unknown key of a known section is an error:
 * "environment BERTSTREAM_BATCH_FOO: unknown key 'batch.foo'". */
int config_apply_env(bs_config *c, char **envp, char *err);

/* Applies one "section.key=value" (as given to -o). Map keys keep everything after the first dot
 * ("kafka.bootstrap.servers=h:9092"). Errors name the override: "-o batch.max_tokens=x: batch.max_tokens: ...". */
int config_set(bs_config *c, const char *key_eq_value, char *err);

/* Cross-key checks run after every source is applied (batch.max_tokens >= model.max_seq_len...). */
int config_validate(const bs_config *c, char *err);

/* Returned by config_parse_args when -h/--help was given: the caller prints its usage, exits 0. */
#define CONFIG_HELP 1

/* The worker's and trainer's command line: argv[1..argc-1] may hold `--config FILE` (or --config=FILE;
 * repeatable, applied in order), `-o section.key=value` (or -osection.key=value, repeatable) and -h/--help.
 * Applies defaults < files < envp (NULL = environ) < -o in that order whatever the argument order, then
 * config_validate. Any other argument is an error. Returns BS_OK, BS_ERR or CONFIG_HELP. */
int config_parse_args(bs_config *c, int argc, char **argv, char **envp, char *err);

/* A command's own boolean flag (e.g. train's --force): removes every `flag` from argv[1..] in place,
 * never a value of -o or --config, so config_parse_args sees only its arguments. Returns 1 if present. */
int config_take_flag(int *argc, char **argv, const char *flag);

/* Writes every key as YAML (loadable again) with secret values replaced by "***". */
int config_dump(const bs_config *c, FILE *f);

/* The value of one key ("batch.max_sequences", "kafka.bootstrap.servers", "delivery") as text, secrets
 * NOT masked. BS_ERR for an unknown key or a map key that is not set. */
int config_get(const bs_config *c, const char *key, char *buf, size_t cap, char *err);

/* 1 when a key's value must never be printed: it contains "password", "secret", "hmac_key",
 * "sasl.oauthbearer" or "ssl.key" (case-insensitive). */
int config_is_secret(const char *key);

/* model.vocab, or <model.dir>/vocab.txt when it is "". Returns buf. */
const char *config_vocab_path(const bs_config *c, char *buf, size_t cap);

/* Sets the log module's level and format from log.level and log.format. */
void config_apply_logging(const bs_config *c);

/* Map helpers. kv_get returns NULL when the key is absent. */
const char *config_kv_get(const bs_kvlist *l, const char *key);
int config_kv_set(bs_kvlist *l, const char *key, const char *value, char *err);

/* Names of enum values ("avro", "exactly_once", "logfmt"). */
const char *config_format_name(bs_format f);
const char *config_delivery_name(bs_delivery d);

#endif
