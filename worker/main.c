/* bertstream: one executable, one subcommand per job (see DESIGN.md). */
#include <stdio.h>
#include <string.h>

#include "commands.h"

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"tokenize", cmd_tokenize, "JSONL {\"text\"} -> {\"ids\"} with bert-base-uncased's tokenizer"},
    {"score", cmd_score, "offline scoring of JSONL reviews (encoder + head)"},
    {"bench", cmd_bench, "encoder throughput benchmark"},
    {"init-model", cmd_init_model, "write a randomly initialised model directory"},
    {"broker", cmd_broker, "embedded development Kafka cluster (librdkafka mock) on loopback"},
    {"worker", cmd_worker, "the streaming scorer (Kafka in, Avro results out)"},
    {"train", cmd_train, "retrain the head from the labeled topic and publish it"},
    {"train-head", cmd_train_head, "train a head from a features file (AdamW, BCE)"},
    {"produce", cmd_produce, "load JSONL into a topic as Avro"},
    {"consume", cmd_consume, "dump a topic as JSONL"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: bertstream <command> [options]   (bertstream <command> --help)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-11s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("bertstream %s\n", BS_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "bertstream: unknown command '%s' (bertstream --help lists them)\n", argv[1]);
    return 2;
}
