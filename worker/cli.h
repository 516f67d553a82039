/* Command-line helpers shared by the subcommands: strict number parsing with bounds,
 * so every bad flag value is one clear line naming the flag. */
#ifndef BS_CLI_H
#define BS_CLI_H

#include <stdint.h>

/* Parses a whole-string integer in [min, max]; error names the flag. */
int cli_int(const char *flag, const char *s, long long min, long long max, long long *out, char *err);
int cli_double(const char *flag, const char *s, double min, double max, double *out, char *err);
/* argv[*i] is a flag that needs a value: returns argv[++*i] or NULL with an error. */
const char *cli_value(int argc, char **argv, int *i, char *err);

#endif
