/*
 * Fused element-wise passes of the Richardson-Lucy loop (float32, CPU).
 *
 * Eager PyTorch makes one pass over the padded grid per operation; these
 * kernels do each step's arithmetic in one pass, on `nthreads` OpenMP
 * threads. Built with -fopenmp, the library needs libgomp.so.1; PyTorch's
 * wheels load their own libgomp.so.1 first, so the loader reuses it and these
 * loops run on PyTorch's thread pool (a second pool, e.g. Python threads,
 * competed with PyTorch's threads that spin-wait after each parallel region,
 * and lost the gain). The kernels are called through ctypes
 * (restore3d/_fused.py); the module object exists only so that the build and
 * the import machinery can find the file.
 *
 * Built by setup.py as an optional extension; when it is missing RL runs the
 * same arithmetic with PyTorch operations.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__INTEL_COMPILER)
/* one AVX2 and one baseline build of each kernel, chosen at load time */
#define R3D_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define R3D_CLONES
#endif

/* the signature version: restore3d/_fused.py refuses a library built from other sources */
int r3d_abi(void)
{
    return 5;
}

/* 1 when the kernels run on OpenMP threads, 0 when built without OpenMP */
int r3d_parallel(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* ratio = y / max(mu + b, eps) on the data domain D, a (nz, ny, nx) block.
 * mu and out are strided views (element strides); y and b are contiguous;
 * b may be NULL, then the constant bconst is added. */
R3D_CLONES
void r3d_ratio(const float *mu, int64_t mz, int64_t my, int64_t mx,
               const float *y, const float *b, float bconst, float eps,
               float *out, int64_t oz, int64_t oy, int64_t ox,
               int64_t nz, int64_t ny, int64_t nx, int nthreads)
{
    int64_t rows = nz * ny;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < rows; r++) {
        int64_t z = r / ny, j = r % ny;
        const float *m = mu + z * mz + j * my;
        const float *yy = y + r * nx;
        const float *bb = b ? b + r * nx : 0;
        float *o = out + z * oz + j * oy;
        if (mx == 1 && ox == 1 && bb) {
            for (int64_t i = 0; i < nx; i++) {
                float v = m[i] + bb[i];
                o[i] = yy[i] / (v > eps ? v : eps);
            }
        } else if (mx == 1 && ox == 1) {
            for (int64_t i = 0; i < nx; i++) {
                float v = m[i] + bconst;
                o[i] = yy[i] / (v > eps ? v : eps);
            }
        } else {
            for (int64_t i = 0; i < nx; i++) {
                float v = m[i * mx] + (bb ? bb[i] : bconst);
                o[i * ox] = yy[i] / (v > eps ? v : eps);
            }
        }
    }
}

/* The RL normalisation at grid voxel (z, y, x) is tab[(iz[z] * ty + iy[y]) * tx + ix[x]]: a small table
 * and per-axis indices (restore3d/_border_weights.py), not a grid. Along x the index is constant on
 * [x0, x1) (the columns farther than half the PSF from the data's border): there the weight is one
 * number and the loop vectorises; the gathers stay at the row's ends. */
#define R3D_WEIGHT_ROW(z, y) (tab + ((int64_t)iz[z] * ty + iy[y]) * tx)

/* plain RL update in place on a (nz, ny, nx) grid: back = back * w * est */
R3D_CLONES
void r3d_update(float *restrict back, const float *restrict tab, int64_t ty, int64_t tx,
                const int32_t *iz, const int32_t *iy, const int32_t *restrict ix, int64_t x0, int64_t x1,
                const float *restrict est, int64_t nz, int64_t ny, int64_t nx, int nthreads)
{
    int64_t rows = nz * ny;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < rows; r++) {
        const float *restrict w = R3D_WEIGHT_ROW(r / ny, r % ny);
        const float wc = w[ix[x0]];
        float *restrict bk = back + r * nx;
        const float *restrict es = est + r * nx;
        for (int64_t i = 0; i < x0; i++)
            bk[i] = bk[i] * w[ix[i]] * es[i];
        for (int64_t i = x0; i < x1; i++)
            bk[i] = bk[i] * wc * es[i];
        for (int64_t i = x1; i < nx; i++)
            bk[i] = bk[i] * w[ix[i]] * es[i];
    }
}

/* Biggs-Andrews RL update in place: back = back * w * est and the new
 * difference d = back - est replaces the previous one in g; returns
 * dots[0] = sum d^2 and dots[1] = sum d * g_previous (accumulated in double).
 * One buffer for both differences: each element is read before it is
 * overwritten, which saves a stream over keeping two. */
#define R3D_BIGGS_STEP(wi)                          \
    do {                                            \
        float x_ = bk[i] * (wi) * es[i];            \
        float d_ = x_ - es[i];                      \
        float p_ = gr[i];                           \
        bk[i] = x_;                                 \
        gr[i] = d_;                                 \
        rgg += (double)d_ * (double)d_;             \
        rgp += (double)d_ * (double)p_;             \
    } while (0)

R3D_CLONES
void r3d_update_biggs(float *restrict back, const float *restrict tab, int64_t ty, int64_t tx,
                      const int32_t *iz, const int32_t *iy, const int32_t *restrict ix, int64_t x0, int64_t x1,
                      const float *restrict est, float *restrict g, int64_t nz, int64_t ny, int64_t nx,
                      double *dots, int nthreads)
{
    double gg = 0.0, gp = 0.0;
    int64_t rows = nz * ny;
    #pragma omp parallel for schedule(static) num_threads(nthreads) reduction(+:gg, gp)
    for (int64_t r = 0; r < rows; r++) {
        const float *restrict w = R3D_WEIGHT_ROW(r / ny, r % ny);
        const float wc = w[ix[x0]];
        float *restrict bk = back + r * nx;
        const float *restrict es = est + r * nx;
        float *restrict gr = g + r * nx;
        double rgg = 0.0, rgp = 0.0;
        for (int64_t i = 0; i < x0; i++)
            R3D_BIGGS_STEP(w[ix[i]]);
        for (int64_t i = x0; i < x1; i++)
            R3D_BIGGS_STEP(wc);
        for (int64_t i = x1; i < nx; i++)
            R3D_BIGGS_STEP(w[ix[i]]);
        gg += rgg;
        gp += rgp;
    }
    dots[0] = gg;
    dots[1] = gp;
}

/* Biggs-Andrews extrapolation: out = max(x + a (x - xprev), 0) */
R3D_CLONES
void r3d_extrapolate(const float *restrict x, const float *restrict xprev, float a, float *restrict out,
                     int64_t n, int nthreads)
{
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t i = 0; i < n; i++) {
        float v = x[i] + a * (x[i] - xprev[i]);
        out[i] = v > 0.0f ? v : 0.0f;
    }
}

/* complex product with the conjugate, in place: a = a * conj(b) on n
 * complex64 values (interleaved real, imaginary): the matched back
 * projection's OTF product without a stored conjugate OTF */
R3D_CLONES
void r3d_mul_conj(float *restrict a, const float *restrict b, int64_t n, int nthreads)
{
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t i = 0; i < n; i++) {
        float ar = a[2 * i], ai = a[2 * i + 1], br = b[2 * i], bi = b[2 * i + 1];
        a[2 * i] = ar * br + ai * bi;
        a[2 * i + 1] = ai * br - ar * bi;
    }
}

static struct PyModuleDef r3d_module = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "Fused float32 kernels of the Richardson-Lucy loop (called through ctypes).",
    -1, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void)
{
    return PyModule_Create(&r3d_module);
}
