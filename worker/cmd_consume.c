/* `bertstream consume`: dumps a topic as JSON lines, one per message: the decoded record plus
 * "_partition", "_offset", "_timestamp", "_key" and, when present, "_headers" (so dead letters
 * show their bertstream.error.* headers); a value that does not decode gets "_error" instead. */
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "codec.h"
#include "commands.h"
#include "common.h"
#include "kafka.h"

static volatile sig_atomic_t run = 1;

static void on_signal(int sig) {
    (void)sig;
    run = 0;
}

static void usage(FILE *f) {
    fprintf(
        f, "usage: bertstream consume --brokers HOSTS --topic T [--schema "
           "review_score|review|labeled_review|head_weights]\n"
           "                          [--framing avro|confluent|json|text] [--schema-id N] [--from-beginning]\n"
           "                          [--max N] [--timeout-ms MS] [--group G] [-X property=value ...]\n"
           "\n"
           "Prints one JSON line per message of topic T: the decoded record's fields plus \"_partition\",\n"
           "\"_offset\", \"_timestamp\" (ms), \"_key\" (a string, or {\"base64\": ...} when not UTF-8, or null) and\n"
           "\"_headers\" when the message has headers (dead letters carry bertstream.error.code and friends).\n"
           "A value that does not decode prints \"_error\": {\"code\", \"reason\"} and \"_value\" (string or base64).\n"
           "Tensors of head_weights print as arrays of floats; its signature as hex.\n"
           "\n"
           "  --brokers HOSTS    bootstrap servers (host:port,...)\n"
           "  --topic T          topic to read\n"
           "  --schema S         review_score (default), review, labeled_review or head_weights\n"
           "  --framing F        avro (default), confluent, json (review, labeled_review) or text (review)\n"
           "  --schema-id N      with confluent framing: the id values must carry (default: any)\n"
           "  --from-beginning   start at the oldest message (default: only new messages)\n"
           "  --max N            exit after N messages (default: no limit)\n"
           "  --timeout-ms MS    exit after MS milliseconds without a message (default: wait until SIGINT)\n"
           "  --group G          consume as member of consumer group G and commit its offsets; without it every\n"
           "                     partition is read directly and nothing is committed\n"
           "  -X prop=value      any librdkafka consumer property (repeatable)\n"
           "  --help             this text\n"
           "\n"
           "Exit status: 0 after --max messages, the idle timeout or SIGINT; 1 on a Kafka error (e.g. no such\n"
           "topic); 2 on a usage error.\n");
}

static int append_base64(bs_buf *b, const uint8_t *p, size_t n) {
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (bs_buf_reserve(b, (n + 2) / 3 * 4 + 1) != BS_OK) return BS_ERR;
    char *o = (char *)b->data + b->len;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        *o++ = tbl[v >> 18 & 63];
        *o++ = tbl[v >> 12 & 63];
        *o++ = i + 1 < n ? tbl[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? tbl[v & 63] : '=';
    }
    b->len = (size_t)(o - (char *)b->data);
    b->data[b->len] = 0;
    return BS_OK;
}

/* Bytes as a JSON string when they are UTF-8, else {"base64": "..."}; NULL as null. */
static int append_bytes(bs_buf *b, const void *p, size_t n) {
    if (!p) return bs_buf_append(b, "null", 4);
    if (codec_utf8_valid(p, n)) return bs_buf_append_json_string(b, p, n);
    int rc = bs_buf_append(b, "{\"base64\":\"", 11);
    rc |= append_base64(b, p, n);
    return rc | bs_buf_append(b, "\"}", 2);
}

static int append_field(bs_buf *b, const char *name) {
    return bs_buf_printf(b, ",\"%s\":", name);
}

static int append_floats(bs_buf *b, const float *x, size_t n) {
    int rc = bs_buf_append(b, "[", 1);
    for (size_t i = 0; i < n; i++) {
        if (i) rc |= bs_buf_append(b, ",", 1);
        rc |= bs_buf_append_json_float(b, x[i]);
    }
    return rc | bs_buf_append(b, "]", 1);
}

/* The decoded record's fields, each preceded by a comma (the line starts with "_partition"). */
static int append_record(bs_buf *b, bs_codec *codec, bs_schema schema, bs_framing framing, int32_t schema_id,
                         const rd_kafka_message_t *m, const char *topic, const char **code, char *err) {
    int rc = BS_OK;
    switch (schema) {
    case BS_SCHEMA_REVIEW: {
        bs_review r;
        if (codec_decode_review(codec, framing, schema_id, m->payload, m->len, m->key, m->key_len, topic, m->partition,
                                m->offset, &r, code, err) != BS_OK)
            return BS_ERR;
        rc |= append_field(b, "review_id") | bs_buf_append_json_string(b, r.review_id, r.review_id_len);
        rc |= append_field(b, "text") | bs_buf_append_json_string(b, r.text, r.text_len);
        rc |= append_field(b, "source");
        rc |= r.has_source ? bs_buf_append_json_string(b, r.source, r.source_len) : bs_buf_append(b, "null", 4);
        rc |= append_field(b, "created_at");
        rc |= r.has_created_at ? bs_buf_printf(b, "%" PRId64, r.created_at) : bs_buf_append(b, "null", 4);
        break;
    }
    case BS_SCHEMA_LABELED_REVIEW: {
        bs_labeled_review r;
        if (codec_decode_labeled_review(codec, framing, schema_id, m->payload, m->len, &r, code, err) != BS_OK)
            return BS_ERR;
        rc |= append_field(b, "review_id") | bs_buf_append_json_string(b, r.review_id, r.review_id_len);
        rc |= append_field(b, "text") | bs_buf_append_json_string(b, r.text, r.text_len);
        rc |= bs_buf_printf(b, ",\"label\":%" PRId32, r.label);
        break;
    }
    case BS_SCHEMA_REVIEW_SCORE: {
        bs_review_score s;
        if (codec_decode_review_score(codec, framing, schema_id, m->payload, m->len, &s, code, err) != BS_OK)
            return BS_ERR;
        rc |= append_field(b, "review_id") | bs_buf_append_json_string(b, s.review_id, s.review_id_len);
        rc |= append_field(b, "label") | bs_buf_append_json_string(b, s.label, strlen(s.label));
        rc |= append_field(b, "probability") | bs_buf_append_json_float(b, s.probability);
        rc |= append_field(b, "logit") | bs_buf_append_json_float(b, s.logit);
        rc |= bs_buf_printf(b, ",\"tokens\":%" PRId32 ",\"truncated\":%s,\"head_version\":%" PRId64, s.tokens,
                            s.truncated ? "true" : "false", s.head_version);
        rc |= append_field(b, "model_id") | bs_buf_append_json_string(b, s.model_id, strlen(s.model_id));
        rc |= bs_buf_printf(b, ",\"scored_at\":%" PRId64 ",\"source_partition\":%" PRId32 ",\"source_offset\":%" PRId64,
                            s.scored_at, s.source_partition, s.source_offset);
        break;
    }
    case BS_SCHEMA_HEAD_WEIGHTS: {
        bs_head_weights h;
        if (codec_decode_head_weights(codec, framing, schema_id, m->payload, m->len, &h, code, err) != BS_OK)
            return BS_ERR;
        size_t C = (size_t)h.input_dim, Hd = (size_t)h.hidden_dim;
        rc |= bs_buf_printf(b, ",\"version\":%" PRId64, h.version);
        rc |= append_field(b, "encoder_id") | bs_buf_append_json_string(b, h.encoder_id, strlen(h.encoder_id));
        rc |= append_field(b, "feature") | bs_buf_append_json_string(b, h.feature, strlen(h.feature));
        rc |= bs_buf_printf(b, ",\"input_dim\":%" PRId32 ",\"hidden_dim\":%" PRId32, h.input_dim, h.hidden_dim);
        rc |= append_field(b, "fc1_weight") | append_floats(b, h.fc1_weight, Hd * C);
        rc |= append_field(b, "fc1_bias") | append_floats(b, h.fc1_bias, Hd);
        rc |= append_field(b, "fc2_weight") | append_floats(b, h.fc2_weight, Hd);
        rc |= append_field(b, "fc2_bias") | append_floats(b, h.fc2_bias, 1);
        rc |= bs_buf_append(b, ",\"metrics\":{", 12);
        for (int i = 0; i < h.n_metrics; i++) {
            if (i) rc |= bs_buf_append(b, ",", 1);
            rc |= bs_buf_append_json_string(b, h.metric_names[i], strlen(h.metric_names[i]));
            rc |= bs_buf_append(b, ":", 1) | bs_buf_append_json_double(b, h.metric_values[i]);
        }
        rc |= bs_buf_printf(b, "},\"created_at\":%" PRId64 ",\"signature\":", h.created_at);
        if (!h.has_signature) {
            rc |= bs_buf_append(b, "null", 4);
        } else {
            rc |= bs_buf_append(b, "\"", 1);
            for (size_t i = 0; i < h.signature_len; i++) rc |= bs_buf_printf(b, "%02x", h.signature[i]);
            rc |= bs_buf_append(b, "\"", 1);
        }
        break;
    }
    }
    if (rc != BS_OK) {
        *code = "out_of_memory";
        return bs_err(err, "out of memory");
    }
    return BS_OK;
}

static int append_headers(bs_buf *b, const rd_kafka_message_t *m) {
    rd_kafka_headers_t *hdrs = NULL;
    if (rd_kafka_message_headers(m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR || !hdrs) return BS_OK;
    int rc = bs_buf_append(b, ",\"_headers\":{", 13);
    const char *name;
    const void *val;
    size_t size;
    for (size_t i = 0; rd_kafka_header_get_all(hdrs, i, &name, &val, &size) == RD_KAFKA_RESP_ERR_NO_ERROR; i++) {
        if (i) rc |= bs_buf_append(b, ",", 1);
        rc |= bs_buf_append_json_string(b, name, strlen(name)) | bs_buf_append(b, ":", 1) | append_bytes(b, val, size);
    }
    return rc | bs_buf_append(b, "}", 1);
}

/* Assigns every partition of the topic at the start offset (no group: nothing is committed). */
static int assign_all(rd_kafka_t *rk, const char *brokers, const char *topic, int64_t start, char *err) {
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;
    int rc = BS_ERR;
    /* a new cluster may answer its first metadata request before it knows the topic, and brokers may
     * still be starting: retry for up to 10 s in all */
    double deadline = bs_now() + 10.0;
    while (run) {
        if (md) rd_kafka_metadata_destroy(md), md = NULL;
        int left_ms = (int)((deadline - bs_now()) * 1000.0);
        if (left_ms <= 0) {
            if (!e) e = RD_KAFKA_RESP_ERR__TIMED_OUT;
            break;
        }
        e = rd_kafka_metadata(rk, 0, rkt, &md, left_ms < 5000 ? left_ms : 5000);
        if (!e && md->topic_cnt == 1 && !md->topics[0].err) break;
        if (!e) e = md->topic_cnt == 1 ? md->topics[0].err : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC;
        if (e != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART && e != RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE &&
            e != RD_KAFKA_RESP_ERR__TRANSPORT && e != RD_KAFKA_RESP_ERR__TIMED_OUT)
            break;
        rd_kafka_poll(rk, 300);
    }
    if (e || !md || md->topic_cnt != 1 || md->topics[0].err) {
        bs_err(err, "topic %s: no metadata from %s: %s", topic, brokers, rd_kafka_err2str(e ? e : md->topics[0].err));
        goto done;
    }
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(md->topics[0].partition_cnt);
    for (int i = 0; i < md->topics[0].partition_cnt; i++)
        rd_kafka_topic_partition_list_add(parts, topic, md->topics[0].partitions[i].id)->offset = start;
    e = rd_kafka_assign(rk, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    if (e)
        bs_err(err, "assign %s: %s", topic, rd_kafka_err2str(e));
    else
        rc = BS_OK;
done:
    if (md) rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    return rc;
}

int cmd_consume(int argc, char **argv) {
    char err[BS_ERRLEN], errstr[512];
    const char *brokers = NULL, *topic = NULL, *group = NULL;
    bs_schema schema = BS_SCHEMA_REVIEW_SCORE;
    bs_framing framing = BS_FRAMING_AVRO;
    long long schema_id = -1, max = 0, timeout_ms = 0;
    int from_beginning = 0, status = 1, kafka_verbose = 0;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *rk = NULL;
    bs_codec *codec = NULL;
    bs_buf line = {0};

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            status = 0;
            goto done;
        }
        if (strcmp(a, "--from-beginning") == 0) {
            from_beginning = 1;
            continue;
        }
        int takes_value = strcmp(a, "--brokers") == 0 || strcmp(a, "--topic") == 0 || strcmp(a, "--schema") == 0 ||
                          strcmp(a, "--framing") == 0 || strcmp(a, "--schema-id") == 0 || strcmp(a, "--max") == 0 ||
                          strcmp(a, "--timeout-ms") == 0 || strcmp(a, "--group") == 0 || strcmp(a, "-X") == 0;
        if (!takes_value) {
            bs_err(err, "unknown option '%s' (bertstream consume --help)", a);
            goto usage_error;
        }
        if (!(v = cli_value(argc, argv, &i, err))) goto usage_error;
        if (strcmp(a, "--brokers") == 0)
            brokers = v;
        else if (strcmp(a, "--topic") == 0)
            topic = v;
        else if (strcmp(a, "--group") == 0)
            group = v;
        else if (strcmp(a, "--schema") == 0) {
            if (codec_schema_parse(v, &schema, err) != BS_OK) goto usage_error;
        } else if (strcmp(a, "--framing") == 0) {
            if (codec_framing_parse(v, &framing, err) != BS_OK) goto usage_error;
        } else if (strcmp(a, "--schema-id") == 0) {
            if (cli_int("--schema-id", v, 0, INT32_MAX, &schema_id, err) != BS_OK) goto usage_error;
        } else if (strcmp(a, "--max") == 0) {
            if (cli_int("--max", v, 1, INT64_MAX, &max, err) != BS_OK) goto usage_error;
        } else if (strcmp(a, "--timeout-ms") == 0) {
            if (cli_int("--timeout-ms", v, 1, 86400000, &timeout_ms, err) != BS_OK) goto usage_error;
        } else { /* -X */
            if (kafka_conf_set_arg(conf, v, &kafka_verbose, err) != BS_OK) goto usage_error;
        }
    }
    if (!brokers || !topic) {
        bs_err(err, "%s is required (bertstream consume --help)", !brokers ? "--brokers" : "--topic");
        goto usage_error;
    }
    if ((framing == BS_FRAMING_TEXT && schema != BS_SCHEMA_REVIEW) ||
        (framing == BS_FRAMING_JSON && schema != BS_SCHEMA_REVIEW && schema != BS_SCHEMA_LABELED_REVIEW)) {
        bs_err(err, "--framing %s does not carry %s", codec_framing_name(framing), codec_schema_name(schema));
        goto usage_error;
    }

    /* librdkafka's consumer wants a group.id even for assign(); without --group it is a private one
     * that never joins a group and never commits (enable.auto.commit=false) */
    char private_group[64];
    snprintf(private_group, sizeof private_group, "bertstream-consume-%ld", (long)getpid());
    struct {
        const char *k, *v;
    } props[] = {
        {"bootstrap.servers", brokers},
        {"group.id", group ? group : private_group},
        {"auto.offset.reset", from_beginning ? "earliest" : "latest"},
        {"enable.auto.commit", group ? "true" : "false"},
    };
    for (size_t i = 0; i < sizeof props / sizeof props[0]; i++)
        if (props[i].v && kafka_conf_set(conf, "", props[i].k, props[i].v, err) != BS_OK) {
            fprintf(stderr, "bertstream consume: %s\n", err);
            goto done;
        }
    /* librdkafka logs (connection failures, retries) stay quiet unless -X debug=... or -X log_level=...
     * asked for them, so an error is the one line this command prints. */
    kafka_conf_set_cli_log(conf, kafka_verbose);
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!rk) {
        fprintf(stderr, "bertstream consume: %s\n", errstr);
        goto done;
    }
    conf = NULL; /* rd_kafka_new() took ownership */
    rd_kafka_poll_set_consumer(rk);
    if (!(codec = codec_new(err))) {
        fprintf(stderr, "bertstream consume: %s\n", err);
        goto done;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    if (group) {
        rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(sub, topic, RD_KAFKA_PARTITION_UA);
        rd_kafka_resp_err_t e = rd_kafka_subscribe(rk, sub);
        rd_kafka_topic_partition_list_destroy(sub);
        if (e) {
            fprintf(stderr, "bertstream consume: subscribe %s: %s\n", topic, rd_kafka_err2str(e));
            goto done;
        }
    } else if (assign_all(rk, brokers, topic, from_beginning ? RD_KAFKA_OFFSET_BEGINNING : RD_KAFKA_OFFSET_END, err) !=
               BS_OK) {
        fprintf(stderr, "bertstream consume: %s\n", err);
        goto done;
    }

    long long count = 0;
    double last = bs_now();
    status = 0;
    while (run && (max == 0 || count < max)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (!m) {
            if (timeout_ms && (bs_now() - last) * 1000.0 >= (double)timeout_ms) break;
            continue;
        }
        if (m->err) {
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                fprintf(stderr, "bertstream consume: %s\n", rd_kafka_message_errstr(m));
                if (m->err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC || m->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
                    m->err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED) {
                    status = 1;
                    rd_kafka_message_destroy(m);
                    break;
                }
            }
            rd_kafka_message_destroy(m);
            continue;
        }
        last = bs_now();
        rd_kafka_timestamp_type_t tstype;
        int64_t ts = rd_kafka_message_timestamp(m, &tstype);
        const char *code = NULL;
        line.len = 0;
        int rc = bs_buf_printf(
            &line,
            "{\"_partition\":%" PRId32 ",\"_offset\":%" PRId64 ",\"_timestamp\":%" PRId64 ",\"_key\":", m->partition,
            m->offset, ts);
        rc |= append_bytes(&line, m->key, m->key_len);
        rc |= append_headers(&line, m);
        size_t before = line.len;
        if (append_record(&line, codec, schema, framing, (int32_t)schema_id, m, topic, &code, err) != BS_OK) {
            line.len = before;
            rc |= bs_buf_append(&line, ",\"_error\":{\"code\":", 18) |
                  bs_buf_append_json_string(&line, code ? code : "?", strlen(code ? code : "?")) |
                  bs_buf_append(&line, ",\"reason\":", 10) | bs_buf_append_json_string(&line, err, strlen(err)) |
                  bs_buf_append(&line, "},\"_value\":", 11) |
                  append_bytes(&line, m->payload ? m->payload : (const void *)"", m->len);
        }
        rc |= bs_buf_append(&line, "}\n", 2);
        rd_kafka_message_destroy(m);
        if (rc != BS_OK) {
            fprintf(stderr, "bertstream consume: out of memory\n");
            status = 1;
            break;
        }
        if (fwrite(line.data, 1, line.len, stdout) != line.len || fflush(stdout) != 0) {
            fprintf(stderr, "bertstream consume: cannot write to stdout\n");
            status = 1;
            break;
        }
        count++;
    }
    goto done;

usage_error:
    fprintf(stderr, "bertstream consume: %s\n", err);
    status = 2;
done:
    if (rk) {
        rd_kafka_consumer_close(rk); /* leaves the group (when subscribed) before destroy */
        rd_kafka_destroy(rk);
    }
    if (conf) rd_kafka_conf_destroy(conf);
    codec_free(codec);
    bs_buf_free(&line);
    return status;
}
