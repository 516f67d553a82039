/* libFuzzer target: bert_config_parse on arbitrary bytes. An accepted config must satisfy the
 * invariants the model code relies on (positive sizes, hidden divisible by heads, sane eps). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common.h"
#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[BS_ERRLEN];
    bs_bert_config c;
    if (bert_config_parse((const char *)data, size, "fuzz/config.json", &c, err) != BS_OK) {
        if (strchr(err, '\n')) __builtin_trap();
        return 0;
    }
    if (c.vocab_size < 1 || c.hidden < 1 || c.layers < 1 || c.heads < 1 || c.intermediate < 1 || c.max_positions < 1 ||
        c.type_vocab_size < 1 || c.hidden % c.heads != 0 || !(c.ln_eps > 0 && c.ln_eps < 1))
        __builtin_trap();
    return 0;
}
