/* Quantize float32 rows from a file with slimedge's C kernels, no Python: the harness that checks the
 * kernels give the same bytes on every platform (tests/quant/test_arm.py builds it for x86-64 and, with
 * gcc-aarch64-linux-gnu, for aarch64 run under qemu-user, and compares the outputs).
 *
 *   quantize_file TYPE N_PER_ROW IN.f32 OUT.bin [IMATRIX.f32]
 *
 * TYPE is a name of the SE_TYPES table (kernels/slimedge_kernels.h), e.g. Q4_K or IQ4_NL; IN.f32 holds
 * rows of N_PER_ROW little-endian float32 values; OUT.bin receives the quantized rows; IMATRIX.f32,
 * if given, N_PER_ROW importance weights. Build: cc -O3 -ffp-contract=off -Ikernels
 * kernels/harness/quantize_file.c $(ls kernels/*.c | grep -v binding.c) -lm (setup.py's flags). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "slimedge_kernels.h"

#define SE_NAME_ID(NAME, name, id, qk, imx) {#NAME, id},
static const struct { const char *name; int id; } types[] = {SE_TYPES(SE_NAME_ID)};

static float *read_floats(const char *path, long *n) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    const long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    float *buf = malloc(bytes > 0 ? (size_t)bytes : 1);
    if (!buf || fread(buf, 1, (size_t)bytes, f) != (size_t)bytes) { fprintf(stderr, "%s: read failed\n", path); exit(2); }
    fclose(f);
    *n = bytes / 4;
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s TYPE N_PER_ROW IN.f32 OUT.bin [IMATRIX.f32]\n", argv[0]);
        return 2;
    }
    int qtype = -1;
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); ++i)
        if (strcmp(types[i].name, argv[1]) == 0) qtype = types[i].id;
    if (qtype < 0) { fprintf(stderr, "unknown type %s\n", argv[1]); return 2; }
    const long n_per_row = atol(argv[2]);
    long n, n_imx = 0;
    float *x = read_floats(argv[3], &n);
    float *imx = argc > 5 ? read_floats(argv[5], &n_imx) : NULL;
    const int bs = se_block_size(qtype), ts = se_type_size(qtype);
    if (n_per_row <= 0 || n % n_per_row || n_per_row % bs || (imx && n_imx != n_per_row)) {
        fprintf(stderr, "bad sizes\n");
        return 2;
    }
    const size_t out_bytes = (size_t)(n / bs) * (size_t)ts;
    void *y = malloc(out_bytes ? out_bytes : 1);
    const int rc = se_quantize(qtype, x, y, n / n_per_row, n_per_row, imx);
    if (rc != SE_OK) { fprintf(stderr, "se_quantize failed: %d\n", rc); return 1; }
    FILE *f = fopen(argv[4], "wb");
    if (!f || fwrite(y, 1, out_bytes, f) != out_bytes) { perror(argv[4]); return 2; }
    fclose(f);
    printf("%s %s\n", argv[1], se_isa());
    return 0;
}
