/* Configuration: defaults, YAML errors with exact file:line messages, environment and -o overrides and
 * their precedence, librdkafka map passthrough, secret masking, and the example files in config/. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "test.h"

static char err[BS_ERRLEN];

/* Loads yaml text on top of the defaults as "t.yaml"; returns the config (or NULL with err set). */
static bs_config *load(const char *yaml) {
    bs_config *c = config_new_defaults();
    err[0] = '\0';
    if (config_load_string(c, yaml, strlen(yaml), "t.yaml", err) != BS_OK) {
        config_free(c);
        return NULL;
    }
    return c;
}

/* The error a YAML text produces. */
static const char *load_err(const char *yaml) {
    bs_config *c = load(yaml);
    if (c) {
        config_free(c);
        return "(loaded without error)";
    }
    return err;
}

static char *dump(const bs_config *c) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    config_dump(c, f);
    fclose(f);
    return buf;
}

static void config_defaults_match_design(void) {
    bs_config *c = config_new_defaults();
    CHECK(c != NULL);
    CHECK_INT(c->kafka.n, 0);
    CHECK_STR(config_kv_get(&c->consumer, "group.id"), "bertstream");
    CHECK_INT(c->producer.n, 0);
    CHECK_STR(c->topics.input, "reviews");
    CHECK_STR(c->topics.output, "review-scores");
    CHECK_STR(c->topics.dead_letter, "reviews-dlq");
    CHECK_STR(c->topics.heads, "bertstream-heads");
    CHECK_STR(c->topics.labeled, "reviews-labeled");
    CHECK_INT(c->format.input, BS_FORMAT_AVRO);
    CHECK_INT(c->format.output, BS_FORMAT_AVRO);
    CHECK_INT(c->format.input_schema_id, 1);
    CHECK_INT(c->format.output_schema_id, 2);
    CHECK_STR(c->model.dir, "models/bert-base-uncased");
    CHECK_STR(c->model.vocab, "");
    CHECK_INT(c->model.max_seq_len, 128);
    CHECK_INT(c->model.feature, BS_FEATURE_POOLER);
    CHECK_STR(c->model.device, "auto");
    CHECK_INT(c->model.precision, BS_PREC_AUTO);
    CHECK_STR(c->head.file, "models/head.safetensors");
    CHECK_STR(c->head.hmac_key, "");
    CHECK_INT(c->head.wait_ms, 0);
    CHECK_INT(c->batch.max_sequences, 256);
    CHECK_INT(c->batch.max_tokens, 32768);
    CHECK_INT(c->batch.max_delay_ms, 20);
    CHECK_STR(c->http.listen, "0.0.0.0:9464");
    CHECK_INT(c->delivery, BS_DELIVERY_AT_LEAST_ONCE);
    CHECK_INT(c->worker.tokenizer_threads, 2);
    CHECK_INT(c->worker.max_message_bytes, 16777216);
    CHECK_INT(c->worker.queue_depth, 16384);
    CHECK_INT(c->log.level, BS_LOG_INFO);
    CHECK_INT(c->log.format, BS_LOG_FORMAT_LOGFMT);
    CHECK_INT(c->train.feature, BS_FEATURE_POOLER);
    CHECK(c->train.eval_fraction == 0.1);
    CHECK(c->train.max_regression == 0.01);
    CHECK_INT(c->train.epochs, 10);
    CHECK_INT(c->train.batch, 16);
    CHECK(c->train.lr == 2e-4);
    CHECK(c->train.weight_decay == 0.01);
    CHECK_INT(c->train.seed, 0);
    CHECK_STR(c->train.cache_dir, "cache/features");
    CHECK_STR(c->train.out_dir, "out/heads");
    CHECK_INT(c->train.read_timeout_ms, 30000);
    CHECK_INT(config_validate(c, err), BS_OK);
    config_free(c);
}

static void config_yaml_sets_every_kind_of_value(void) {
    bs_config *c = load("topics: {input: in, output: out}\n"
                        "format:\n  input: confluent\n  output: confluent\n  input_schema_id: 7\n"
                        "model: {max_seq_len: 512, feature: mean, device: 'cuda:1', precision: fp8, vocab: v.txt}\n"
                        "batch:\n  max_sequences: 65536\n  max_tokens: 1048576\n  max_delay_ms: 0\n"
                        "delivery: exactly_once\n"
                        "train: {lr: 1e-3, eval_fraction: 0.9, seed: 9223372036854775807}\n"
                        "log: {level: debug, format: json}\n"
                        "http: {listen: \"[::1]:0\"}\n");
    CHECK(c != NULL);
    if (!c) return;
    CHECK_STR(c->topics.input, "in");
    CHECK_STR(c->topics.output, "out");
    CHECK_INT(c->format.input, BS_FORMAT_CONFLUENT);
    CHECK_INT(c->format.output, BS_FORMAT_CONFLUENT);
    CHECK_INT(c->format.input_schema_id, 7);
    CHECK_INT(c->model.max_seq_len, 512);
    CHECK_INT(c->model.feature, BS_FEATURE_MEAN);
    CHECK_STR(c->model.device, "cuda:1");
    CHECK_INT(c->model.precision, BS_PREC_FP8);
    CHECK_INT(c->batch.max_sequences, 65536);
    CHECK_INT(c->batch.max_tokens, 1048576);
    CHECK_INT(c->batch.max_delay_ms, 0);
    CHECK_INT(c->delivery, BS_DELIVERY_EXACTLY_ONCE);
    CHECK(c->train.lr == 1e-3);
    CHECK(c->train.eval_fraction == 0.9);
    CHECK_INT(c->train.seed, INT64_MAX);
    CHECK_INT(c->log.level, BS_LOG_DEBUG);
    CHECK_INT(c->log.format, BS_LOG_FORMAT_JSON);
    CHECK_STR(c->http.listen, "[::1]:0");
    char buf[256];
    CHECK_STR(config_vocab_path(c, buf, sizeof buf), "v.txt");
    config_free(c);
}

static void config_unknown_key_names_file_line_and_key(void) {
    CHECK_STR(load_err("batch:\n  max_sequences: 8\n  max_sequencs: 9\n"),
              "t.yaml:3: unknown key 'batch.max_sequencs'");
    CHECK_STR(load_err("# comment\nbacth:\n  max_sequences: 8\n"), "t.yaml:2: unknown key 'bacth'");
    CHECK_STR(load_err("model: {dir: m, devcie: cpu}\n"), "t.yaml:1: unknown key 'model.devcie'");
    CHECK_STR(load_err("delivery: at_least_once\ntopics:\n  dlq: x\n"), "t.yaml:3: unknown key 'topics.dlq'");
}

static void config_bad_values_name_key_bounds_and_value(void) {
    CHECK_STR(load_err("batch:\n  max_sequences: abc\n"),
              "t.yaml:2: batch.max_sequences: expected an integer in 1..65536, got 'abc'");
    CHECK_STR(load_err("batch:\n  max_sequences: 0\n"),
              "t.yaml:2: batch.max_sequences: expected an integer in 1..65536, got '0'");
    CHECK_STR(load_err("batch:\n  max_sequences: 65537\n"),
              "t.yaml:2: batch.max_sequences: expected an integer in 1..65536, got '65537'");
    CHECK_STR(load_err("batch: {max_sequences: 1.5}\n"),
              "t.yaml:1: batch.max_sequences: expected an integer in 1..65536, got '1.5'");
    CHECK_STR(load_err("model:\n  max_seq_len: 99999999999999999999\n"),
              "t.yaml:2: model.max_seq_len: expected an integer in 2..8192, got '99999999999999999999'");
    CHECK_STR(load_err("model:\n  max_seq_len: ' 12'\n"),
              "t.yaml:2: model.max_seq_len: expected an integer in 2..8192, got ' 12'");
    CHECK_STR(load_err("train:\n  eval_fraction: 0.95\n"),
              "t.yaml:2: train.eval_fraction: expected a number in 0..0.9, got '0.95'");
    CHECK_STR(load_err("train:\n  lr: nan\n"), "t.yaml:2: train.lr: expected a number in 0..1, got 'nan'");
    CHECK_STR(load_err("format:\n  output: json\n"),
              "t.yaml:2: format.output: expected one of avro|confluent, got 'json'");
    CHECK_STR(load_err("format:\n  input: xml\n"),
              "t.yaml:2: format.input: expected one of avro|confluent|json|text, got 'xml'");
    CHECK_STR(load_err("delivery: twice\n"),
              "t.yaml:1: delivery: expected one of at_least_once|exactly_once, got 'twice'");
    CHECK_STR(load_err("model:\n  device: gpu\n"),
              "t.yaml:2: model.device: expected auto, cpu, cuda or cuda:N, got 'gpu'");
    CHECK_STR(load_err("model:\n  device: 'cuda:'\n"),
              "t.yaml:2: model.device: expected auto, cpu, cuda or cuda:N, got 'cuda:'");
    CHECK_STR(load_err("http:\n  listen: 9464\n"),
              "t.yaml:2: http.listen: expected HOST:PORT with a port in 0..65535 (\"\" disables), got '9464'");
    CHECK_STR(
        load_err("http:\n  listen: 'localhost:70000'\n"),
        "t.yaml:2: http.listen: expected HOST:PORT with a port in 0..65535 (\"\" disables), got 'localhost:70000'");
    CHECK_STR(load_err("topics:\n  input: ''\n"), "t.yaml:2: topics.input: expected a non-empty string, got ''");
    /* The line is the value's, also in a multi-line flow mapping. */
    CHECK_STR(load_err("batch: {max_sequences: 4,\n        max_tokens: 1}\n"),
              "t.yaml:2: batch.max_tokens: expected an integer in 2..1048576, got '1'");
}

static void config_structure_errors_name_the_line(void) {
    CHECK_STR(load_err("- a\n- b\n"), "t.yaml:1: expected a mapping of sections at the top level, got a sequence");
    CHECK_STR(load_err("batch: 5\n"), "t.yaml:1: section 'batch' must be a mapping, got a scalar");
    CHECK_STR(load_err("kafka:\n  - bootstrap.servers\n"),
              "t.yaml:2: section 'kafka' must be a mapping, got a sequence");
    CHECK_STR(load_err("batch:\n  max_sequences: [1, 2]\n"),
              "t.yaml:2: batch.max_sequences: expected a scalar, got a sequence");
    CHECK_STR(load_err("delivery:\n  mode: exactly_once\n"), "t.yaml:2: delivery: expected a scalar, got a mapping");
    CHECK_STR(load_err("kafka:\n  a: {b: c}\n"), "t.yaml:2: kafka.a: expected a scalar, got a mapping");
    CHECK_STR(load_err("batch:\n  max_sequences: 1\nmodel: {}\nbatch:\n  max_tokens: 9\n"),
              "t.yaml:4: duplicate key 'batch' (first at line 1)");
    CHECK_STR(load_err("kafka:\n  acks: all\n  acks: 1\n"), "t.yaml:3: duplicate key 'kafka.acks' (first at line 2)");
    CHECK_STR(load_err("batch: {}\n---\nbatch: {}\n"), "t.yaml:2: only one YAML document is allowed");
    CHECK_STR(load_err("topics:\n  input: \"a\\0b\"\n"), "t.yaml:2: topics.input contains a NUL character");
}

static void config_yaml_syntax_error_names_the_line(void) {
    const char *e = load_err("batch:\n  max_sequences: 1\n   max_tokens: [\n");
    CHECK_CONTAINS(e, "t.yaml:3: YAML: ");
    e = load_err("topics:\n  input: \"unterminated\n");
    CHECK_CONTAINS(e, "t.yaml:");
    CHECK_CONTAINS(e, "YAML: found unexpected end of stream");
    e = load_err("topics: {input: \xff\xfe}\n");
    CHECK_CONTAINS(e, "t.yaml:1: YAML: invalid");
    /* deep nesting stops early (libyaml's scanner is quadratic in depth) */
    static char deep[400010];
    memcpy(deep, "kafka:\n  a: ", 12);
    memset(deep + 12, '[', 200000);
    memset(deep + 200012, ']', 199990);
    CHECK_STR(load_err(deep), "t.yaml:2: YAML: nested deeper than 16 levels");
}

static void config_empty_file_and_empty_sections_keep_defaults(void) {
    bs_config *c = load("");
    CHECK(c != NULL);
    if (c) CHECK_INT(c->batch.max_sequences, 256);
    config_free(c);
    c = load("# nothing but a comment\n");
    CHECK(c != NULL);
    config_free(c);
    c = load("producer:\nbatch: {}\nkafka: ~\n");
    CHECK(c != NULL);
    if (c) CHECK_INT(c->kafka.n, 0);
    config_free(c);
    /* a null value of a string key is "": head.file "" means no head file */
    c = load("head:\n  file:\n");
    CHECK(c != NULL);
    if (c) CHECK_STR(c->head.file, "");
    config_free(c);
}

static void config_maps_pass_librdkafka_properties_as_strings(void) {
    bs_config *c = load("kafka:\n  bootstrap.servers: \"h1:9092,h2:9092\"\n  socket.timeout.ms: 5000\n"
                        "  enable.ssl.certificate.verification: no\n  client.id: 'yes'\n  api.version.request: True\n"
                        "consumer:\n  group.id: g1\n  enable.auto.commit: false\n  auto.offset.reset: earliest\n"
                        "producer: {linger.ms: 5, acks: all, compression.type: ~}\n");
    CHECK(c != NULL);
    if (!c) return;
    CHECK_INT(c->kafka.n, 5);
    CHECK_STR(c->kafka.items[0].key, "bootstrap.servers"); /* file order is kept */
    CHECK_STR(c->kafka.items[0].value, "h1:9092,h2:9092");
    CHECK_STR(config_kv_get(&c->kafka, "socket.timeout.ms"), "5000");
    CHECK_STR(config_kv_get(&c->kafka, "enable.ssl.certificate.verification"), "false"); /* YAML 1.1 bool */
    CHECK_STR(config_kv_get(&c->kafka, "client.id"), "yes");                             /* quoted: a string */
    CHECK_STR(config_kv_get(&c->kafka, "api.version.request"), "true");
    CHECK_INT(c->consumer.n, 3); /* group.id replaced the default in place */
    CHECK_STR(c->consumer.items[0].key, "group.id");
    CHECK_STR(c->consumer.items[0].value, "g1");
    CHECK_STR(config_kv_get(&c->consumer, "enable.auto.commit"), "false");
    CHECK_STR(config_kv_get(&c->producer, "linger.ms"), "5");
    CHECK_STR(config_kv_get(&c->producer, "acks"), "all");
    CHECK_STR(config_kv_get(&c->producer, "compression.type"), "");
    CHECK(config_kv_get(&c->producer, "absent") == NULL);
    char buf[64];
    CHECK_INT(config_get(c, "kafka.socket.timeout.ms", buf, sizeof buf, err), BS_OK);
    CHECK_STR(buf, "5000");
    CHECK_INT(config_get(c, "kafka.nope", buf, sizeof buf, err), BS_ERR);
    CHECK_STR(err, "kafka.nope: not set");
    config_free(c);
}

static void config_env_sets_keys_and_maps(void) {
    bs_config *c = config_new_defaults();
    char *env[] = {"PATH=/usr/bin",
                   "BERTSTREAM_DATA=/somewhere", /* not a section: ignored */
                   "BERTSTREAM_SOURCE_DIR=/src",
                   "BERTSTREAM_BATCH_MAX_SEQUENCES=64",
                   "BERTSTREAM_DELIVERY=exactly_once",
                   "BERTSTREAM_MODEL_DEVICE=cuda:0",
                   "BERTSTREAM_KAFKA_SASL_PASSWORD=hunter2",
                   "BERTSTREAM_KAFKA_BOOTSTRAP_SERVERS=b:9092",
                   "BERTSTREAM_CONSUMER_GROUP_ID=g-env",
                   "BERTSTREAM_PRODUCER_LINGER_MS=7",
                   "BERTSTREAM_HEAD_HMAC_KEY=k3y",
                   "bertstream_batch_max_tokens=5", /* lower case: not ours */
                   NULL};
    CHECK_INT(config_apply_env(c, env, err), BS_OK);
    CHECK_INT(c->batch.max_sequences, 64);
    CHECK_INT(c->batch.max_tokens, 32768);
    CHECK_INT(c->delivery, BS_DELIVERY_EXACTLY_ONCE);
    CHECK_STR(c->model.device, "cuda:0");
    CHECK_STR(config_kv_get(&c->kafka, "sasl.password"), "hunter2");
    CHECK_STR(config_kv_get(&c->kafka, "bootstrap.servers"), "b:9092");
    CHECK_STR(config_kv_get(&c->consumer, "group.id"), "g-env");
    CHECK_INT(c->consumer.n, 1);
    CHECK_STR(config_kv_get(&c->producer, "linger.ms"), "7");
    CHECK_STR(c->head.hmac_key, "k3y");
    config_free(c);
}

static void config_env_errors_name_the_variable(void) {
    bs_config *c = config_new_defaults();
    char *bad_key[] = {"BERTSTREAM_BATCH_MAX_SEQUENCS=1", NULL};
    CHECK_INT(config_apply_env(c, bad_key, err), BS_ERR);
    CHECK_STR(err, "environment BERTSTREAM_BATCH_MAX_SEQUENCS: unknown key 'batch.max_sequencs'");
    char *bad_val[] = {"BERTSTREAM_BATCH_MAX_DELAY_MS=-1", NULL};
    CHECK_INT(config_apply_env(c, bad_val, err), BS_ERR);
    CHECK_STR(err, "environment BERTSTREAM_BATCH_MAX_DELAY_MS: batch.max_delay_ms: expected an integer in 0..60000, "
                   "got '-1'");
    /* Kubernetes service links of Services named bertstream-worker / bertstream-kafka are not ours */
    char *links[] = {"BERTSTREAM_WORKER_PORT=tcp://10.0.0.1:9464",
                     "BERTSTREAM_WORKER_SERVICE_HOST=10.0.0.1",
                     "BERTSTREAM_WORKER_SERVICE_PORT=9464",
                     "BERTSTREAM_WORKER_SERVICE_PORT_METRICS=9464",
                     "BERTSTREAM_WORKER_PORT_9464_TCP=tcp://10.0.0.1:9464",
                     "BERTSTREAM_WORKER_PORT_9464_TCP_ADDR=10.0.0.1",
                     "BERTSTREAM_KAFKA_PORT=tcp://10.0.0.2:9092",
                     NULL};
    CHECK_INT(config_apply_env(c, links, err), BS_OK);
    CHECK_INT(c->kafka.n, 0);
    char *section_only[] = {"BERTSTREAM_KAFKA=x", NULL};
    CHECK_INT(config_apply_env(c, section_only, err), BS_ERR);
    CHECK_STR(err, "environment BERTSTREAM_KAFKA: unknown key 'kafka'");
    config_free(c);
}

static void config_override_sets_keys_and_names_itself_in_errors(void) {
    bs_config *c = config_new_defaults();
    CHECK_INT(config_set(c, "batch.max_tokens=4096", err), BS_OK);
    CHECK_INT(c->batch.max_tokens, 4096);
    CHECK_INT(config_set(c, "kafka.bootstrap.servers=k:1,k:2", err), BS_OK);
    CHECK_STR(config_kv_get(&c->kafka, "bootstrap.servers"), "k:1,k:2");
    CHECK_INT(config_set(c, "delivery=exactly_once", err), BS_OK);
    CHECK_INT(c->delivery, BS_DELIVERY_EXACTLY_ONCE);
    CHECK_INT(config_set(c, "head.file=", err), BS_OK);
    CHECK_STR(c->head.file, "");
    CHECK_INT(config_set(c, "model.dir=a=b", err), BS_OK); /* only the first '=' splits */
    CHECK_STR(c->model.dir, "a=b");

    CHECK_INT(config_set(c, "batch.max_tokens=lots", err), BS_ERR);
    CHECK_STR(err, "-o batch.max_tokens=lots: batch.max_tokens: expected an integer in 2..1048576, got 'lots'");
    CHECK_INT(config_set(c, "batch.max_tokenz=1", err), BS_ERR);
    CHECK_STR(err, "-o batch.max_tokenz=1: unknown key 'batch.max_tokenz'");
    CHECK_INT(config_set(c, "batch=1", err), BS_ERR);
    CHECK_STR(err, "-o batch=1: unknown key 'batch'");
    CHECK_INT(config_set(c, "delivery.mode=x", err), BS_ERR);
    CHECK_STR(err, "-o delivery.mode=x: unknown key 'delivery.mode'");
    CHECK_INT(config_set(c, "kafka.=x", err), BS_ERR);
    CHECK_STR(err, "-o kafka.=x: unknown key 'kafka.'");
    CHECK_INT(config_set(c, "batch.max_tokens", err), BS_ERR);
    CHECK_STR(err, "-o batch.max_tokens: expected section.key=value");
    /* a mistyped secret key must not echo the secret */
    CHECK_INT(config_set(c, "haed.hmac_key=hunter2", err), BS_ERR);
    CHECK_STR(err, "-o haed.hmac_key=***: unknown key 'haed.hmac_key'");
    config_free(c);
}

static void config_precedence_is_defaults_file_env_then_o(void) {
    const char *dir = bs_test_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/p.yaml", dir);
    FILE *f = fopen(path, "w");
    fputs("batch:\n  max_sequences: 100\n  max_tokens: 1000\n  max_delay_ms: 1\nkafka:\n  acks: all\n", f);
    fclose(f);
    char *env[] = {"BERTSTREAM_BATCH_MAX_SEQUENCES=200", "BERTSTREAM_BATCH_MAX_TOKENS=2000", "BERTSTREAM_KAFKA_ACKS=1",
                   NULL};
    /* -o comes before --config on purpose: the order of arguments does not change precedence */
    char *argv[] = {"worker", "-o", "batch.max_sequences=300", "--config", path, "-okafka.acks=0", NULL};
    bs_config *c = config_new_defaults();
    CHECK_INT(config_parse_args(c, 6, argv, env, err), BS_OK);
    CHECK_INT(c->batch.max_sequences, 300); /* -o beats env and file */
    CHECK_INT(c->batch.max_tokens, 2000);   /* env beats file */
    CHECK_INT(c->batch.max_delay_ms, 1);    /* file beats default */
    CHECK_STR(config_kv_get(&c->kafka, "acks"), "0");
    config_free(c);

    /* without -o the environment wins over the file */
    char *argv2[] = {"worker", NULL, NULL};
    char cfgarg[600];
    snprintf(cfgarg, sizeof cfgarg, "--config=%s", path);
    argv2[1] = cfgarg;
    c = config_new_defaults();
    CHECK_INT(config_parse_args(c, 2, argv2, env, err), BS_OK);
    CHECK_INT(c->batch.max_sequences, 200);
    CHECK_STR(config_kv_get(&c->kafka, "acks"), "1");
    config_free(c);

    /* a later file overrides an earlier one */
    char path2[512];
    snprintf(path2, sizeof path2, "%s/q.yaml", dir);
    f = fopen(path2, "w");
    fputs("batch:\n  max_delay_ms: 2\n", f);
    fclose(f);
    char *argv3[] = {"train", "--config", path, "--config", path2, NULL};
    char *noenv[] = {NULL};
    c = config_new_defaults();
    CHECK_INT(config_parse_args(c, 5, argv3, noenv, err), BS_OK);
    CHECK_INT(c->batch.max_delay_ms, 2);
    CHECK_INT(c->batch.max_sequences, 100);
    config_free(c);
    remove(path);
    remove(path2);
    remove(dir);
}

static void config_parse_args_reports_help_and_bad_arguments(void) {
    char *noenv[] = {NULL};
    bs_config *c = config_new_defaults();
    char *help[] = {"worker", "-o", "batch.max_tokens=x", "--help", NULL};
    CHECK_INT(config_parse_args(c, 4, help, noenv, err), CONFIG_HELP);
    char *unknown[] = {"worker", "--confg", "x.yaml", NULL};
    CHECK_INT(config_parse_args(c, 3, unknown, noenv, err), BS_ERR);
    CHECK_STR(err, "unknown argument '--confg' (expected --config FILE or -o section.key=value)");
    char *missing[] = {"worker", "--config", NULL};
    CHECK_INT(config_parse_args(c, 2, missing, noenv, err), BS_ERR);
    CHECK_STR(err, "--config needs a value");
    char *nofile[] = {"worker", "--config", "/nonexistent/bertstream.yaml", NULL};
    CHECK_INT(config_parse_args(c, 3, nofile, noenv, err), BS_ERR);
    CHECK_STR(err, "/nonexistent/bertstream.yaml: No such file or directory");
    char *badenv[] = {"BERTSTREAM_LOG_LEVEL=loud", NULL};
    char *none[] = {"worker", NULL};
    CHECK_INT(config_parse_args(c, 1, none, badenv, err), BS_ERR);
    CHECK_STR(err, "environment BERTSTREAM_LOG_LEVEL: log.level: expected one of debug|info|warn|error, got 'loud'");
    config_free(c);
}

static void config_validate_needs_room_for_one_sequence(void) {
    char *noenv[] = {NULL};
    char *argv[] = {"worker", "-o", "model.max_seq_len=512", "-o", "batch.max_tokens=256", NULL};
    bs_config *c = config_new_defaults();
    CHECK_INT(config_parse_args(c, 5, argv, noenv, err), BS_ERR);
    CHECK_STR(err, "batch.max_tokens (256) must be at least model.max_seq_len (512)");
    config_free(c);
}

static void config_secret_detection_covers_librdkafka_names(void) {
    CHECK(config_is_secret("sasl.password"));
    CHECK(config_is_secret("ssl.keystore.password"));
    CHECK(config_is_secret("ssl.key.pem"));
    CHECK(config_is_secret("ssl.key.location"));
    CHECK(config_is_secret("sasl.oauthbearer.client.secret"));
    CHECK(config_is_secret("sasl.oauthbearer.config"));
    CHECK(config_is_secret("head.hmac_key"));
    CHECK(config_is_secret("SASL.PASSWORD"));
    CHECK(!config_is_secret("sasl.username"));
    CHECK(!config_is_secret("ssl.ca.location"));
    CHECK(!config_is_secret("bootstrap.servers"));
}

static void config_dump_never_shows_secrets(void) {
    bs_config *c = config_new_defaults();
    char *env[] = {"BERTSTREAM_KAFKA_SASL_PASSWORD=hunter2", "BERTSTREAM_HEAD_HMAC_KEY=s3cr3tkey", NULL};
    CHECK_INT(config_apply_env(c, env, err), BS_OK);
    CHECK_INT(config_set(c, "kafka.ssl.key.pem=-----BEGIN PRIVATE KEY-----", err), BS_OK);
    CHECK_INT(config_set(c, "consumer.sasl.oauthbearer.client.secret=oauthsecret", err), BS_OK);
    CHECK_INT(config_set(c, "producer.ssl.keystore.password=kspass", err), BS_OK);
    CHECK_INT(config_set(c, "kafka.sasl.username=alice", err), BS_OK);
    char *text = dump(c);
    CHECK(strstr(text, "hunter2") == NULL);
    CHECK(strstr(text, "s3cr3tkey") == NULL);
    CHECK(strstr(text, "PRIVATE KEY") == NULL);
    CHECK(strstr(text, "oauthsecret") == NULL);
    CHECK(strstr(text, "kspass") == NULL);
    CHECK_CONTAINS(text, "  \"sasl.password\": \"***\"\n");
    CHECK_CONTAINS(text, "  hmac_key: \"***\"\n");
    CHECK_CONTAINS(text, "  \"sasl.username\": \"alice\"\n");
    free(text);
    /* the raw value is still there for the code that needs it */
    CHECK_STR(config_kv_get(&c->kafka, "sasl.password"), "hunter2");
    config_free(c);
}

static void config_dump_is_yaml_that_loads_back_the_same(void) {
    bs_config *c = config_new_defaults();
    CHECK_INT(config_set(c, "kafka.bootstrap.servers=a:1", err), BS_OK);
    CHECK_INT(config_set(c, "topics.input=we\"ird\\name", err), BS_OK);
    CHECK_INT(config_set(c, "train.lr=0.0003", err), BS_OK);
    CHECK_INT(config_set(c, "format.input=text", err), BS_OK);
    /* control characters and the line breaks YAML would fold (NEL, LS) are escaped */
    CHECK_INT(config_set(c,
                         "topics.output=a\tb\x01"
                         "c\xc2\x85"
                         "d\xe2\x80\xa8"
                         "e\xc3\xa9",
                         err),
              BS_OK);
    char *text = dump(c);
    CHECK_CONTAINS(text, "  output: \"a\\tb\\x01c\\x85d\\u2028e\xc3\xa9\"\n");
    CHECK_CONTAINS(text, "batch:\n  max_sequences: 256\n  max_tokens: 32768\n  max_delay_ms: 20\n");
    CHECK_CONTAINS(text, "\ndelivery: at_least_once\n");
    CHECK_CONTAINS(text, "  lr: 0.0003\n");
    CHECK_CONTAINS(text, "producer: {}\n");
    bs_config *d = config_new_defaults();
    CHECK_INT(config_load_string(d, text, strlen(text), "dump", err), BS_OK);
    CHECK_STR(d->topics.input, "we\"ird\\name");
    CHECK(d->train.lr == 0.0003);
    CHECK_STR(d->topics.output, "a\tb\x01"
                                "c\xc2\x85"
                                "d\xe2\x80\xa8"
                                "e\xc3\xa9");
    CHECK_INT(d->format.input, BS_FORMAT_TEXT);
    char *again = dump(d);
    CHECK_STR(again, text);
    free(text);
    free(again);
    config_free(c);
    config_free(d);
}

static void config_example_files_load(void) {
    const char *src = getenv("BERTSTREAM_SOURCE_DIR");
    if (!src || !*src) src = BS_SOURCE_DIR;
    char path[1024];
    char *noenv[] = {NULL};
    snprintf(path, sizeof path, "%s/config/worker.yaml", src);
    char *argv[] = {"worker", "--config", path, NULL};
    bs_config *c = config_new_defaults();
    CHECK_INT(config_parse_args(c, 3, argv, noenv, err), BS_OK);
    CHECK_STR(config_kv_get(&c->kafka, "bootstrap.servers"), "127.0.0.1:9092");
    CHECK_STR(config_kv_get(&c->consumer, "group.id"), "bertstream");
    CHECK_STR(c->http.listen, "0.0.0.0:9464");
    CHECK_INT(c->batch.max_sequences, 256);
    config_free(c);

    snprintf(path, sizeof path, "%s/config/trainer.yaml", src);
    c = config_new_defaults();
    CHECK_INT(config_parse_args(c, 3, argv, noenv, err), BS_OK);
    CHECK_STR(config_kv_get(&c->consumer, "group.id"), "bertstream-trainer");
    CHECK_STR(c->http.listen, "");
    CHECK(c->train.lr == 2e-4);
    CHECK_INT(c->train.epochs, 10);
    config_free(c);
}

static void config_take_flag_removes_the_flag_but_never_an_option_value(void) {
    char *argv[] = {"train", "--force", "-o", "--force", "--config", "--force", "--force", "-o", "a.b=1", NULL};
    int argc = 9;
    CHECK_INT(config_take_flag(&argc, argv, "--force"), 1);
    CHECK_INT(argc, 7);
    const char *want[] = {"train", "-o", "--force", "--config", "--force", "-o", "a.b=1"};
    for (int i = 0; i < 7 && i < argc; i++) CHECK_STR(argv[i], want[i]);
    CHECK_INT(config_take_flag(&argc, argv, "--dump-config"), 0);
    CHECK_INT(argc, 7);
}

int main(void) {
    RUN(config_defaults_match_design);
    RUN(config_yaml_sets_every_kind_of_value);
    RUN(config_unknown_key_names_file_line_and_key);
    RUN(config_bad_values_name_key_bounds_and_value);
    RUN(config_structure_errors_name_the_line);
    RUN(config_yaml_syntax_error_names_the_line);
    RUN(config_empty_file_and_empty_sections_keep_defaults);
    RUN(config_maps_pass_librdkafka_properties_as_strings);
    RUN(config_env_sets_keys_and_maps);
    RUN(config_env_errors_name_the_variable);
    RUN(config_override_sets_keys_and_names_itself_in_errors);
    RUN(config_precedence_is_defaults_file_env_then_o);
    RUN(config_parse_args_reports_help_and_bad_arguments);
    RUN(config_validate_needs_room_for_one_sequence);
    RUN(config_secret_detection_covers_librdkafka_names);
    RUN(config_dump_never_shows_secrets);
    RUN(config_dump_is_yaml_that_loads_back_the_same);
    RUN(config_example_files_load);
    RUN(config_take_flag_removes_the_flag_but_never_an_option_value);
    return bs_test_done();
}
