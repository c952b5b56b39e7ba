/* CPython binding of the kernels: the module slimedge._kernels.
 *
 * The only file that knows Python. Takes contiguous buffers (NumPy arrays, bytes, bytearray,
 * memoryview), checks their sizes, and calls the C kernels with the GIL released, so Python
 * threads quantize different row chunks of one tensor in parallel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "slimedge_kernels.h"

/* get a C-contiguous buffer whose items are float32 ('f') or raw bytes ('B'/'b'/'c'); float32
 * data passed as another dtype (e.g. float64) is refused instead of being reinterpreted */
static int get_buffer(PyObject *obj, Py_buffer *view, int writable, int want_float, const char *what) {
    const int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    const char *f = view->format ? view->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') ++f;
    const int is_bytes = (f[0] == 'B' || f[0] == 'b' || f[0] == 'c') && f[1] == 0;
    const int is_float = f[0] == 'f' && f[1] == 0;
    if (!(is_bytes || (want_float && is_float))) {
        PyErr_Format(PyExc_TypeError, "slimedge._kernels: %s must hold %s, got buffer format '%s'", what,
                     want_float ? "float32" : "bytes (uint8)", view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static int check_type(int qtype) {
    if (se_block_size(qtype) == 0) {
        PyErr_Format(PyExc_ValueError, "slimedge._kernels: type id %d is not supported", qtype);
        return -1;
    }
    return 0;
}

static PyObject *py_quantize(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"qtype", "src", "dst", "n_rows", "n_per_row", "imatrix", NULL};
    int qtype;
    Py_buffer src, dst, imx = {0};
    long long n_rows, n_per_row;
    PyObject *src_obj, *dst_obj, *imatrix = Py_None;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iOOLL|O", kwlist, &qtype, &src_obj, &dst_obj,
                                     &n_rows, &n_per_row, &imatrix))
        return NULL;
    if (get_buffer(src_obj, &src, 0, 1, "src") < 0) return NULL;
    if (get_buffer(dst_obj, &dst, 1, 0, "dst") < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    PyObject *result = NULL;
    int have_imx = 0;
    if (check_type(qtype) < 0) goto done;
    const int bs = se_block_size(qtype), ts = se_type_size(qtype);
    if (n_rows < 0 || n_per_row < 0 || n_per_row % bs) {
        PyErr_Format(PyExc_ValueError, "row length %lld is not a multiple of the block size %d",
                     n_per_row, bs);
        goto done;
    }
    const long long n = n_rows * n_per_row;
    if (src.len != (Py_ssize_t)(n * 4)) {
        PyErr_Format(PyExc_ValueError, "src holds %zd bytes, expected %lld float32 values",
                     src.len, n);
        goto done;
    }
    if (dst.len != (Py_ssize_t)(n / bs * ts)) {
        PyErr_Format(PyExc_ValueError, "dst holds %zd bytes, expected %lld", dst.len, n / bs * ts);
        goto done;
    }
    if (imatrix != Py_None) {
        if (get_buffer(imatrix, &imx, 0, 1, "imatrix") < 0) goto done;
        have_imx = 1;
        if (imx.len != (Py_ssize_t)(n_per_row * 4)) {
            PyErr_Format(PyExc_ValueError, "imatrix holds %zd bytes, expected %lld float32 values",
                         imx.len, n_per_row);
            goto done;
        }
        if (!se_has_imatrix(qtype)) {
            PyErr_SetString(PyExc_NotImplementedError, "importance weights not supported by the C kernels for this type");
            goto done;
        }
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = se_quantize(qtype, (const float *)src.buf, dst.buf, n_rows, n_per_row,
                     have_imx ? (const float *)imx.buf : NULL);
    Py_END_ALLOW_THREADS
    if (rc == SE_ERR_NEEDS_IMATRIX) {
        PyErr_SetString(PyExc_ValueError, "this type needs importance weights (an imatrix), as in ggml");
        goto done;
    }
    if (rc != SE_OK) {
        PyErr_Format(PyExc_RuntimeError, "slimedge._kernels.quantize failed with status %d", rc);
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    if (have_imx) PyBuffer_Release(&imx);
    return result;
}

static PyObject *py_dequantize(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"qtype", "src", "dst", "n", NULL};
    int qtype;
    Py_buffer src, dst;
    long long n;
    PyObject *src_obj, *dst_obj;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iOOL", kwlist, &qtype, &src_obj, &dst_obj, &n))
        return NULL;
    if (get_buffer(src_obj, &src, 0, 0, "src") < 0) return NULL;
    if (get_buffer(dst_obj, &dst, 1, 1, "dst") < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    PyObject *result = NULL;
    if (check_type(qtype) < 0) goto done;
    const int bs = se_block_size(qtype), ts = se_type_size(qtype);
    if (n < 0 || n % bs) {
        PyErr_Format(PyExc_ValueError, "%lld values is not a multiple of the block size %d", n, bs);
        goto done;
    }
    if (src.len != (Py_ssize_t)(n / bs * ts) || dst.len != (Py_ssize_t)(n * 4)) {
        PyErr_Format(PyExc_ValueError, "buffer sizes %zd/%zd do not match %lld values", src.len,
                     dst.len, n);
        goto done;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = se_dequantize(qtype, src.buf, (float *)dst.buf, n);
    Py_END_ALLOW_THREADS
    if (rc != SE_OK) {
        PyErr_Format(PyExc_RuntimeError, "slimedge._kernels.dequantize failed with status %d", rc);
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyObject *py_block_size(PyObject *self, PyObject *arg) {
    (void)self;
    const long t = PyLong_AsLong(arg);
    if (t == -1 && PyErr_Occurred()) return NULL;
    return PyLong_FromLong(se_block_size((int)t));
}

static PyObject *py_type_size(PyObject *self, PyObject *arg) {
    (void)self;
    const long t = PyLong_AsLong(arg);
    if (t == -1 && PyErr_Occurred()) return NULL;
    return PyLong_FromLong(se_type_size((int)t));
}

static PyObject *py_has_imatrix(PyObject *self, PyObject *arg) {
    (void)self;
    const long t = PyLong_AsLong(arg);
    if (t == -1 && PyErr_Occurred()) return NULL;
    return PyBool_FromLong(se_has_imatrix((int)t));
}

static PyObject *py_supported_types(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
#define SE_ID(NAME, name, id, qk, imx) id,
    static const int ids[] = {SE_TYPES(SE_ID)}; /* the kernels' type table (slimedge_kernels.h) */
#undef SE_ID
    const Py_ssize_t n = (Py_ssize_t)(sizeof(ids) / sizeof(ids[0]));
    PyObject *t = PyTuple_New(n);
    if (!t) return NULL;
    for (Py_ssize_t i = 0; i < n; ++i) PyTuple_SET_ITEM(t, i, PyLong_FromLong(ids[i]));
    return t;
}

static PyObject *py_repack_fp4(PyObject *self, PyObject *args) {
    Py_buffer codes, scales, dst;
    PyObject *codes_obj, *scales_obj, *dst_obj;
    int n_sub, g, mask;
    long long row_blocks = 0, step = 1;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOiii|LL", &codes_obj, &scales_obj, &dst_obj, &n_sub, &g, &mask, &row_blocks,
                          &step))
        return NULL;
    if (n_sub <= 0 || g <= 0 || g % 2 || mask < 0 || mask > 255 || row_blocks < 0 || step < 1) {
        PyErr_SetString(PyExc_ValueError, "repack_fp4: bad block geometry");
        return NULL;
    }
    if (get_buffer(codes_obj, &codes, 0, 0, "codes") < 0) return NULL;
    if (get_buffer(scales_obj, &scales, 0, 0, "scales") < 0) {
        PyBuffer_Release(&codes);
        return NULL;
    }
    if (get_buffer(dst_obj, &dst, 1, 0, "dst") < 0) {
        PyBuffer_Release(&codes);
        PyBuffer_Release(&scales);
        return NULL;
    }
    PyObject *result = NULL;
    /* rows of row_blocks blocks (0: one row of all the blocks); every step-th row from the first is repacked */
    const Py_ssize_t n_blocks = scales.len / n_sub, rb = row_blocks ? (Py_ssize_t)row_blocks : n_blocks;
    const Py_ssize_t n_rows = rb ? n_blocks / rb : 0, n_out = n_rows ? (n_rows - 1) / step + 1 : 0;
    if (scales.len % n_sub || codes.len != n_blocks * n_sub * g || (rb && n_blocks % rb) ||
        dst.len != n_out * rb * n_sub * (g + 1)) {
        PyErr_Format(PyExc_ValueError, "repack_fp4: %zd code bytes, %zd scales and %zd dst bytes do not fit "
                     "blocks of %d groups of %d bytes", codes.len, scales.len, dst.len, n_sub, g);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    se_fp4_repack((const uint8_t *)codes.buf, (const uint8_t *)scales.buf, (uint8_t *)dst.buf, n_out, rb, step, n_sub,
                  g, (uint8_t)mask);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&codes);
    PyBuffer_Release(&scales);
    PyBuffer_Release(&dst);
    return result;
}

/* the buffers of round_fwd / round_bwd: None where optional; each checked to hold n items of its size */
typedef struct {
    PyObject *obj;
    int writable, is_float, optional;
    Py_ssize_t n;
    const char *what;
} RoundArg;

static int round_buffers(RoundArg *a, Py_buffer *views, int count) {
    for (int i = 0; i < count; ++i) {
        views[i].obj = NULL;
        views[i].buf = NULL;
        if (a[i].obj == Py_None && a[i].optional) continue;
        if (get_buffer(a[i].obj, &views[i], a[i].writable, a[i].is_float, a[i].what) < 0) goto fail;
        if (views[i].len != a[i].n * (a[i].is_float ? 4 : 1)) {
            PyErr_Format(PyExc_ValueError, "slimedge._kernels: %s holds %zd bytes, expected %zd %s", a[i].what,
                         views[i].len, a[i].n, a[i].is_float ? "float32 values" : "bytes");
            PyBuffer_Release(&views[i]);
            views[i].obj = NULL;
            goto fail;
        }
    }
    return 0;
fail:
    for (int i = 0; i < count; ++i)
        if (views[i].obj) PyBuffer_Release(&views[i]);
    return -1;
}

static void release_all(Py_buffer *views, int count) {
    for (int i = 0; i < count; ++i)
        if (views[i].obj) PyBuffer_Release(&views[i]);
}

static PyObject *py_round_fwd(PyObject *self, PyObject *args) {
    PyObject *w, *v, *s, *o, *codes, *out_w, *out_q, *inside;
    long long n_sub, k;
    int lo, hi, bf16;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOLLiiOpOO", &w, &v, &s, &o, &codes, &n_sub, &k, &lo, &hi, &out_w, &bf16, &out_q,
                          &inside))
        return NULL;
    if (n_sub < 0 || k <= 0 || k > SE_ROUND_MAX_K || lo > hi || lo < -128 || hi > 127) {
        PyErr_SetString(PyExc_ValueError, "round_fwd: bad geometry or code range");
        return NULL;
    }
    const Py_ssize_t n = (Py_ssize_t)(n_sub * k);
    RoundArg a[8] = {{w, 0, 1, 0, n, "w"}, {v, 0, 1, 0, n, "v"}, {s, 0, 1, 0, n_sub, "scale"},
                     {o, 0, 1, 1, n_sub, "off"}, {codes, 0, 0, 0, n, "codes"}, {out_w, 1, !bf16, 0, bf16 ? 2 * n : n, "out_w"},
                     {out_q, 1, 0, 0, n, "out_q"}, {inside, 1, 0, 0, n, "inside"}};
    Py_buffer b[8];
    if (round_buffers(a, b, 8) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    se_round_fwd((const float *)b[0].buf, (const float *)b[1].buf, (const float *)b[2].buf, (const float *)b[3].buf,
                 (const int8_t *)b[4].buf, n_sub, k, lo, hi, b[5].buf, bf16, (int8_t *)b[6].buf,
                 (uint8_t *)b[7].buf);
    Py_END_ALLOW_THREADS
    release_all(b, 8);
    return Py_NewRef(Py_None);
}

static PyObject *py_round_bwd(PyObject *self, PyObject *args) {
    PyObject *g, *w, *s, *o, *q, *inside, *g_v, *g_s, *g_o;
    long long n_sub, k;
    int bf16;
    (void)self;
    if (!PyArg_ParseTuple(args, "OpOOOOOLLOOO", &g, &bf16, &w, &s, &o, &q, &inside, &n_sub, &k, &g_v, &g_s, &g_o))
        return NULL;
    if (n_sub < 0 || k <= 0 || k > SE_ROUND_MAX_K) {
        PyErr_SetString(PyExc_ValueError, "round_bwd: bad geometry");
        return NULL;
    }
    const Py_ssize_t n = (Py_ssize_t)(n_sub * k);
    RoundArg a[9] = {{g, 0, !bf16, 0, bf16 ? 2 * n : n, "g"}, {w, 0, 1, 0, n, "w"}, {s, 0, 1, 0, n_sub, "scale"},
                     {o, 0, 1, 1, n_sub, "off"}, {q, 0, 0, 0, n, "q"}, {inside, 0, 0, 0, n, "inside"},
                     {g_v, 1, 1, 1, n, "g_v"}, {g_s, 1, 1, 1, n_sub, "g_scale"}, {g_o, 1, 1, 1, n_sub, "g_off"}};
    Py_buffer b[9];
    if (round_buffers(a, b, 9) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    se_round_bwd(b[0].buf, bf16, (const float *)b[1].buf, (const float *)b[2].buf, (const float *)b[3].buf,
                 (const int8_t *)b[4].buf, (const uint8_t *)b[5].buf, n_sub, k, (float *)b[6].buf, (float *)b[7].buf,
                 (float *)b[8].buf);
    Py_END_ALLOW_THREADS
    release_all(b, 9);
    return Py_NewRef(Py_None);
}

static PyObject *py_isa(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(se_isa());
}

static PyMethodDef methods[] = {
    {"quantize", (PyCFunction)(void (*)(void))py_quantize, METH_VARARGS | METH_KEYWORDS,
     "quantize(qtype, src, dst, n_rows, n_per_row, imatrix=None): float32 rows -> GGML blocks"},
    {"dequantize", (PyCFunction)(void (*)(void))py_dequantize, METH_VARARGS | METH_KEYWORDS,
     "dequantize(qtype, src, dst, n): GGML blocks -> n float32 values"},
    {"block_size", py_block_size, METH_O, "weights per block of a type id (0: unsupported)"},
    {"type_size", py_type_size, METH_O, "bytes per block of a type id (0: unsupported)"},
    {"has_imatrix", py_has_imatrix, METH_O, "whether importance weights are supported"},
    {"supported_types", py_supported_types, METH_NOARGS, "GGML type ids the kernels handle"},
    {"repack_fp4", py_repack_fp4, METH_VARARGS,
     "repack_fp4(codes, scales, dst, n_sub, g, mask, row_blocks=0, step=1): FP4 checkpoint codes and scales -> GGML "
     "blocks (of every step-th row of row_blocks blocks)"},
    {"round_fwd", py_round_fwd, METH_VARARGS,
     "round_fwd(w, v, scale, off, codes, n_sub, k, lo, hi, out_w, out_bf16, out_q, inside): tune's learned rounding, "
     "forward (out_w float32, or bf16 as bytes)"},
    {"round_bwd", py_round_bwd, METH_VARARGS,
     "round_bwd(g, g_bf16, w, scale, off, q, inside, n_sub, k, g_v, g_scale, g_off): its backward (None: not wanted)"},
    {"isa", py_isa, METH_NOARGS, "instruction set the kernels run with: 'avx2' or 'baseline'"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "slimedge._kernels",
    "slimedge C kernels: bit-exact GGML quantization (see kernels/ in the source tree).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
