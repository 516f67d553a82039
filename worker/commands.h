/* Entry points of the `bertstream` subcommands (one file each: worker/cmd_<name>.c).
 * Each returns the process exit status; errors are one line on stderr. */
#ifndef BS_COMMANDS_H
#define BS_COMMANDS_H

int cmd_tokenize(int argc, char **argv);
int cmd_score(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_init_model(int argc, char **argv);
int cmd_broker(int argc, char **argv);
int cmd_worker(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_train_head(int argc, char **argv);
int cmd_produce(int argc, char **argv);
int cmd_consume(int argc, char **argv);

#endif
