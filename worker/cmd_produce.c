/* `bertstream produce`: loads JSON lines from stdin into a topic as Review or LabeledReview
 * messages (Avro, Confluent, JSON or raw-text framing), keyed by review_id; waits for every
 * delivery and reports one summary line. Exit 0 only when every line was delivered. */
#include <inttypes.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
        f, "usage: bertstream produce --brokers HOSTS --topic T [--schema review|labeled_review]\n"
           "                          [--framing avro|confluent|json|text] [--schema-id N] [--key-field NAME]\n"
           "                          [--timeout-ms MS] [-X property=value ...]\n"
           "\n"
           "Reads JSON lines on stdin and produces one message per line to topic T:\n"
           "  review          {\"review_id\": \"...\", \"text\": \"...\", \"source\": \"...\"|null, \"created_at\": "
           "ms|null}\n"
           "  labeled_review  {\"review_id\": \"...\", \"text\": \"...\", \"label\": 0|1}\n"
           "Extra fields are ignored. Lines that are not such objects are reported on stderr (with their line\n"
           "number) and skipped. Blank lines are ignored.\n"
           "\n"
           "  --brokers HOSTS    bootstrap servers (host:port,...)\n"
           "  --topic T          topic to produce to\n"
           "  --schema S         review (default) or labeled_review\n"
           "  --framing F        avro (default): bare Avro binary; confluent: magic byte 0 + 4-byte schema id + Avro;\n"
           "                     json: the record as one JSON object; text: the review text alone (review only)\n"
           "  --schema-id N      schema registry id written by --framing confluent (required there)\n"
           "  --key-field NAME   JSON field whose value is the message key (default review_id; \"\" for no key)\n"
           "  --timeout-ms MS    how long to wait for outstanding deliveries at the end (default 30000)\n"
           "  -X prop=value      any librdkafka producer property (repeatable)\n"
           "  --help             this text\n"
           "\n"
           "Prints one summary line on stderr. Exit status: 0 when every line was delivered, 1 when a line was\n"
           "bad or a delivery failed, 2 on a usage error.\n");
}

typedef struct {
    long delivered;
    long failed;
    char first_error[256];
} delivery_stats;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    delivery_stats *st = opaque;
    if (m->err) {
        if (st->failed++ == 0) snprintf(st->first_error, sizeof st->first_error, "%s", rd_kafka_err2str(m->err));
    } else {
        st->delivered++;
    }
}

/* The key for one line: --key-field's value (strings as they are, numbers as JSON text). */
static int line_key(const char *line, size_t len, const char *field, bs_buf *key, char *err) {
    json_error_t je;
    json_t *o = json_loadb(line, len, JSON_ALLOW_NUL, &je), *v;
    int rc = BS_OK;
    key->len = 0;
    if (!o) return bs_err(err, "%s", je.text);
    v = json_object_get(o, field);
    if (!v || json_is_null(v))
        rc = bs_err(err, "key field \"%s\" is missing", field);
    else if (json_is_string(v))
        rc = bs_buf_append(key, json_string_value(v), json_string_length(v));
    else if (json_is_integer(v))
        rc = bs_buf_printf(key, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else
        rc = bs_err(err, "key field \"%s\" is not a string or an integer", field);
    json_decref(o);
    return rc;
}

int cmd_produce(int argc, char **argv) {
    char err[BS_ERRLEN], errstr[512];
    const char *brokers = NULL, *topic = NULL, *key_field = "review_id";
    bs_schema schema = BS_SCHEMA_REVIEW;
    bs_framing framing = BS_FRAMING_AVRO;
    long long schema_id = -1, timeout_ms = 30000;
    int status = 1, kafka_verbose = 0;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *rk = NULL;
    bs_codec *codec = NULL;
    bs_buf out = {0}, key = {0};
    char *line = NULL;
    size_t line_cap = 0;
    delivery_stats st = {0};
    long lines = 0, bad = 0, produced = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            status = 0;
            goto done;
        }
        int takes_value = strcmp(a, "--brokers") == 0 || strcmp(a, "--topic") == 0 || strcmp(a, "--schema") == 0 ||
                          strcmp(a, "--framing") == 0 || strcmp(a, "--schema-id") == 0 ||
                          strcmp(a, "--key-field") == 0 || strcmp(a, "--timeout-ms") == 0 || strcmp(a, "-X") == 0;
        if (!takes_value) {
            bs_err(err, "unknown option '%s' (bertstream produce --help)", a);
            goto usage_error;
        }
        if (!(v = cli_value(argc, argv, &i, err))) goto usage_error;
        if (strcmp(a, "--brokers") == 0)
            brokers = v;
        else if (strcmp(a, "--topic") == 0)
            topic = v;
        else if (strcmp(a, "--key-field") == 0)
            key_field = v;
        else if (strcmp(a, "--schema") == 0) {
            if (codec_schema_parse(v, &schema, err) != BS_OK) goto usage_error;
            if (schema != BS_SCHEMA_REVIEW && schema != BS_SCHEMA_LABELED_REVIEW) {
                bs_err(err, "--schema: produce writes review or labeled_review, not %s", v);
                goto usage_error;
            }
        } else if (strcmp(a, "--framing") == 0) {
            if (codec_framing_parse(v, &framing, err) != BS_OK) goto usage_error;
        } else if (strcmp(a, "--schema-id") == 0) {
            if (cli_int("--schema-id", v, 0, INT32_MAX, &schema_id, err) != BS_OK) goto usage_error;
        } else if (strcmp(a, "--timeout-ms") == 0) {
            if (cli_int("--timeout-ms", v, 0, 3600000, &timeout_ms, err) != BS_OK) goto usage_error;
        } else { /* -X */
            if (kafka_conf_set_arg(conf, v, &kafka_verbose, err) != BS_OK) goto usage_error;
        }
    }
    if (!brokers || !topic) {
        bs_err(err, "%s is required (bertstream produce --help)", !brokers ? "--brokers" : "--topic");
        goto usage_error;
    }
    if (framing == BS_FRAMING_CONFLUENT && schema_id < 0) {
        bs_err(err, "--framing confluent needs --schema-id N");
        goto usage_error;
    }
    if (framing == BS_FRAMING_TEXT && schema != BS_SCHEMA_REVIEW) {
        bs_err(err, "--framing text carries reviews only");
        goto usage_error;
    }

    if (kafka_conf_set(conf, "", "bootstrap.servers", brokers, err) != BS_OK) {
        fprintf(stderr, "bertstream produce: %s\n", err);
        goto done;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    /* librdkafka logs (connection failures, retries) stay quiet unless -X debug=... or -X log_level=...
     * asked for them, so an error is the one line this command prints. */
    kafka_conf_set_cli_log(conf, kafka_verbose);
    rd_kafka_conf_set_opaque(conf, &st);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) {
        fprintf(stderr, "bertstream produce: %s\n", errstr);
        goto done;
    }
    conf = NULL; /* rd_kafka_new() took ownership */
    if (!(codec = codec_new(err))) {
        fprintf(stderr, "bertstream produce: %s\n", err);
        goto done;
    }

    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    double t0 = bs_now();
    ssize_t n;
    while (run && (n = getline(&line, &line_cap, stdin)) >= 0) {
        lines++;
        size_t len = (size_t)n;
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) len--;
        if (len == 0 || line[strspn(line, " \t\r\n")] == 0) continue;
        const char *code = NULL, *id;
        size_t id_len;
        int rc;
        if (schema == BS_SCHEMA_REVIEW) {
            bs_review r;
            rc = codec_decode_review(codec, BS_FRAMING_JSON, -1, line, len, NULL, 0, "stdin", 0, lines, &r, &code, err);
            if (rc == BS_OK) rc = codec_encode_review(codec, framing, (int32_t)schema_id, &r, &out, err);
            id = r.review_id, id_len = r.review_id_len;
        } else {
            bs_labeled_review r;
            rc = codec_decode_labeled_review(codec, BS_FRAMING_JSON, -1, line, len, &r, &code, err);
            if (rc == BS_OK) rc = codec_encode_labeled_review(codec, framing, (int32_t)schema_id, &r, &out, err);
            id = r.review_id, id_len = r.review_id_len;
        }
        key.len = 0;
        if (rc == BS_OK && *key_field) {
            if (strcmp(key_field, "review_id") == 0)
                rc = bs_buf_append(&key, id, id_len);
            else
                rc = line_key(line, len, key_field, &key, err);
        }
        if (rc != BS_OK) {
            fprintf(stderr, "bertstream produce: line %ld: %s\n", lines, err);
            bad++;
            continue;
        }
        const void *kp = *key_field ? key.data : NULL; /* RD_KAFKA_V_KEY does not parenthesise its argument */
        for (;;) {
            rd_kafka_resp_err_t e =
                rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                  RD_KAFKA_V_VALUE(out.data, out.len), RD_KAFKA_V_KEY(kp, key.len), RD_KAFKA_V_END);
            if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL && run) {
                rd_kafka_poll(rk, 100); /* wait for deliveries to make room */
                continue;
            }
            if (e) {
                fprintf(stderr, "bertstream produce: line %ld: %s\n", lines, rd_kafka_err2str(e));
                bad++;
            } else {
                produced++;
            }
            break;
        }
        rd_kafka_poll(rk, 0);
    }
    if (ferror(stdin)) fprintf(stderr, "bertstream produce: error reading stdin\n");
    rd_kafka_flush(rk, (int)timeout_ms);
    long undelivered = produced - st.delivered - st.failed;
    fprintf(
        stderr,
        "bertstream produce: %ld delivered, %ld failed, %ld undelivered, %ld bad lines to %s (%s/%s) in %.2f s%s%s\n",
        st.delivered, st.failed, undelivered, bad, topic, codec_schema_name(schema), codec_framing_name(framing),
        bs_now() - t0, st.failed ? "; first error: " : "", st.first_error);
    status = (st.failed == 0 && undelivered == 0 && bad == 0 && run && !ferror(stdin)) ? 0 : 1;
    goto done;

usage_error:
    fprintf(stderr, "bertstream produce: %s\n", err);
    status = 2;
done:
    if (rk) rd_kafka_destroy(rk);
    if (conf) rd_kafka_conf_destroy(conf);
    codec_free(codec);
    bs_buf_free(&out);
    bs_buf_free(&key);
    free(line);
    return status;
}
