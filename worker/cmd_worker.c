/* Placeholder until this command is implemented (see its issue). */
#include <stdio.h>

#include "commands.h"

int cmd_worker(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "bertstream: 'worker' is not implemented yet\n");
    return 2;
}
