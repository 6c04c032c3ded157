/* The usual HTTP/1.1 message heads, parsed in C: a fast path for pacslb.core.http.parse_request
 * and pacslb.core.http_response.parse_response (the l7-http proxy parses two heads per request,
 * and in Python that was a third of its CPU: bench/README.md).
 *
 * The Python parsers stay the rule. This file answers only for heads it fully understands and
 * whose result it can build exactly as they would; for anything else (every head that would be
 * rejected, obs-fold, whitespace before a colon, Transfer-Encoding in a request, an upgrade, a
 * Connection that names other fields, a duplicate Content-Length, the persistence cookie in two
 * Cookie lines or in a server's Set-Cookie...) it declines, and the Python parser decides. Declining is always safe; answering differently
 * from Python is the one bug this file can have, and tests/unit/core/test_headfast.py compares
 * both on generated heads.
 *
 * try_request(head, cookie_name) / try_response(head, head_request, cookie_name) return the
 * Request / Response, or None (declined). parse_request / parse_response fall back to the
 * Python parsers given to setup() themselves, so a caller makes one call either way.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *RequestType, *ResponseType, *py_parse_request, *py_parse_response;
static PyObject *str_empty;
static PyObject *methods[8];
static const char *const method_names[8] = {"GET",  "HEAD",    "POST",  "PUT",
                                            "DELETE", "OPTIONS", "PATCH", "TRACE"};

/* Limits, as pacslb.core.http (module constants: pacslb.core.heads checks them at import) */
#define MAX_REQUEST_LINE 8192
#define MAX_HEADER_SECTION 32768
#define MAX_FIELDS 100
#define MAX_COOKIE_LINE 4096 /* a longer Cookie line with the persistence cookie: Python */

/* Framing, as pacslb.core.http */
enum { NO_BODY = 0, LENGTH = 1, CHUNKED = 2, UNTIL_CLOSE = 3 };

/* 1: a byte a field line may hold (HTAB, SP..~, 0x80..0xFF: pacslb.core.http.VISIBLE);
 * 2: a token character (RFC 9110 tchar), 1 as well. */
static unsigned char cls[256];

static void init_tables(void) {
    cls['\t'] = 1;
    for (int c = 0x20; c < 0x7f; c++) cls[c] = 1;
    for (int c = 0x80; c < 0x100; c++) cls[c] = 1;
    const char *tchar = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    for (const char *p = tchar; *p; p++) cls[(unsigned char)*p] |= 2;
}

static inline unsigned char lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

/* Whether p[0:n] is `lit` (lower case) in any case. */
static inline int name_is(const unsigned char *p, Py_ssize_t n, const char *lit, Py_ssize_t litn) {
    if (n != litn) return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (lower(p[i]) != (unsigned char)lit[i]) return 0;
    return 1;
}

#define NAME_IS(p, n, lit) name_is((p), (n), lit, (Py_ssize_t)sizeof(lit) - 1)

/* p[0:n] with SP and HTAB stripped at both ends. */
static inline void strip_ows(const unsigned char **p, Py_ssize_t *n) {
    while (*n && ((*p)[0] == ' ' || (*p)[0] == '\t')) (*p)++, (*n)--;
    while (*n && ((*p)[*n - 1] == ' ' || (*p)[*n - 1] == '\t')) (*n)--;
}

/* The end of the line starting at `start`: the index of its CR, every byte before it checked
 * (cls 1); -1 for a byte no head may hold, or a CR not followed by LF. A head ends without
 * CRLF, so the last line ends at `len`. */
static inline Py_ssize_t line_end(const unsigned char *s, Py_ssize_t start, Py_ssize_t len) {
    Py_ssize_t i = start;
    while (i < len && cls[s[i]]) i++;
    if (i == len) return len;
    if (s[i] == '\r' && i + 1 < len && s[i + 1] == '\n') return i;
    return -1;
}

/* A Connection value made of the options close, keep-alive and upgrade only (any case, OWS,
 * commas): bit 1 for close, 2 for keep-alive, 4 for upgrade, and 8 (a Connection field was
 * sent); -1 for anything else, which the Python parser treats as naming hop-by-hop fields. */
static int connection_options(const unsigned char *v, Py_ssize_t n) {
    int found = 8;
    Py_ssize_t i = 0;
    for (;;) {
        Py_ssize_t j = i;
        while (j < n && v[j] != ',') j++;
        const unsigned char *t = v + i;
        Py_ssize_t tn = j - i;
        strip_ows(&t, &tn);
        if (NAME_IS(t, tn, "close"))
            found |= 1;
        else if (NAME_IS(t, tn, "keep-alive"))
            found |= 2;
        else if (NAME_IS(t, tn, "upgrade"))
            found |= 4;
        else
            return -1;
        if (j == n) return found;
        i = j + 1;
    }
}

/* 1*DIGIT of at most 18 digits -> its value; -1 otherwise. */
static long long digits(const unsigned char *v, Py_ssize_t n) {
    if (n == 0 || n > 18) return -1;
    long long value = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9') return -1;
        value = value * 10 + (v[i] - '0');
    }
    return value;
}

/* The fields either parser acts on, by name in any case (anything else is forwarded as is). */
enum {
    F_OTHER,
    F_HOST,
    F_CONTENT_LENGTH,
    F_TRANSFER_ENCODING,
    F_CONNECTION,
    F_UPGRADE,
    F_HOP, /* the other hop-by-hop fields: Keep-Alive, Proxy-Connection, TE, Trailer */
    F_FORWARDED, /* X-Forwarded-For, X-Forwarded-Proto: the proxy's own */
    F_COOKIE,
    F_SET_COOKIE,
    F_EXPECT,
};

static int field_kind(const unsigned char *name, Py_ssize_t n) {
    switch (lower(name[0])) { /* one test for the usual names that need nothing */
        case 'c':
            if (NAME_IS(name, n, "content-length")) return F_CONTENT_LENGTH;
            if (NAME_IS(name, n, "connection")) return F_CONNECTION;
            if (NAME_IS(name, n, "cookie")) return F_COOKIE;
            return F_OTHER;
        case 'e':
            return NAME_IS(name, n, "expect") ? F_EXPECT : F_OTHER;
        case 'h':
            return NAME_IS(name, n, "host") ? F_HOST : F_OTHER;
        case 'k':
            return NAME_IS(name, n, "keep-alive") ? F_HOP : F_OTHER;
        case 'p':
            return NAME_IS(name, n, "proxy-connection") ? F_HOP : F_OTHER;
        case 's':
            return NAME_IS(name, n, "set-cookie") ? F_SET_COOKIE : F_OTHER;
        case 't':
            if (NAME_IS(name, n, "transfer-encoding")) return F_TRANSFER_ENCODING;
            return NAME_IS(name, n, "te") || NAME_IS(name, n, "trailer") ? F_HOP : F_OTHER;
        case 'u':
            return NAME_IS(name, n, "upgrade") ? F_UPGRADE : F_OTHER;
        case 'x':
            if (NAME_IS(name, n, "x-forwarded-for") || NAME_IS(name, n, "x-forwarded-proto"))
                return F_FORWARDED;
            return F_OTHER;
        default:
            return F_OTHER;
    }
}

/* A tuple subclass (a NamedTuple) from `n` new references, stolen; NULL (an error set) if one
 * of them is NULL. */
static PyObject *named_tuple(PyObject *type, PyObject **items, Py_ssize_t n) {
    PyObject *t = NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        if (items[i] == NULL) goto fail;
    t = ((PyTypeObject *)type)->tp_alloc((PyTypeObject *)type, n);
    if (t == NULL) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) PyTuple_SET_ITEM(t, i, items[i]);
    return t;
fail:
    for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(items[i]);
    return NULL;
}

/* The field lines of a head, one at a time, and the ones kept for forwarding. */
typedef struct {
    const unsigned char *p; /* in the head, or a line rebuilt here (the Cookie line) */
    Py_ssize_t len;
} span;

typedef struct {
    const unsigned char *s;
    Py_ssize_t len, pos; /* pos: the CR that ends the line before the next one */
    span kept[MAX_FIELDS];
    int nfields, nkept;
    Py_ssize_t total; /* the kept lines' size with their CRLF */
    const char *cookie; /* the persistence cookie's name, or NULL */
    Py_ssize_t cookie_len;
    /* the current line: name: value */
    Py_ssize_t start, end, nlen, vlen;
    const unsigned char *name, *v;
} fields;

static void fields_init(fields *f, PyObject *head, Py_ssize_t first_line_end, PyObject *cookie) {
    f->s = (const unsigned char *)PyBytes_AS_STRING(head);
    f->len = PyBytes_GET_SIZE(head);
    f->pos = first_line_end;
    f->nfields = f->nkept = 0;
    f->total = 0;
    f->cookie = cookie == Py_None ? NULL : PyBytes_AS_STRING(cookie);
    f->cookie_len = cookie == Py_None ? 0 : PyBytes_GET_SIZE(cookie);
}

/* The next field line into f: 1; 0 after the last one; -1 for a line the fast path leaves to
 * Python: a byte no head may hold, no name (obs-fold, a missing colon), a name that is not a
 * token (whitespace before the colon), more lines than MAX_FIELDS. */
static int next_field(fields *f) {
    if (f->pos >= f->len) return 0;
    Py_ssize_t start = f->pos + 2;
    Py_ssize_t end = line_end(f->s, start, f->len);
    if (end < 0 || ++f->nfields > MAX_FIELDS) return -1;
    const unsigned char *name = f->s + start;
    const unsigned char *colon = memchr(name, ':', end - start);
    if (colon == NULL || colon == name) return -1;
    for (const unsigned char *p = name; p < colon; p++)
        if (!(cls[*p] & 2)) return -1;
    f->pos = end;
    f->start = start;
    f->end = end;
    f->name = name;
    f->nlen = colon - name;
    f->v = colon + 1;
    f->vlen = f->s + end - f->v;
    return 1;
}

static inline void keep_field(fields *f) {
    f->kept[f->nkept].p = f->s + f->start;
    f->kept[f->nkept].len = f->end - f->start;
    f->nkept++;
    f->total += f->end - f->start + 2;
}

/* The kept field lines, each with its CRLF, in a new bytes object; b"" for none. */
static PyObject *kept_fields(const fields *f) {
    if (f->nkept == 0) return Py_NewRef(str_empty);
    PyObject *out = PyBytes_FromStringAndSize(NULL, f->total);
    if (out == NULL) return NULL;
    char *w = PyBytes_AS_STRING(out);
    for (int i = 0; i < f->nkept; i++) {
        memcpy(w, f->kept[i].p, f->kept[i].len);
        w += f->kept[i].len;
        *w++ = '\r';
        *w++ = '\n';
    }
    return out;
}

/* A Cookie value carrying the persistence cookie (pacslb.core.http.split_cookie: RFC 6265 §5.4,
 * `a=1; NAME=v; b=2`): 1 if a pair names it (the first one's value, unquoted, in *value; every
 * such pair taken out; the others joined by "; " into out, *out_len bytes, at most 2 * n);
 * 0 if none does. */
static int split_cookie(const unsigned char *v, Py_ssize_t n, const fields *f,
                        const unsigned char **value, Py_ssize_t *value_len, unsigned char *out,
                        Py_ssize_t *out_len) {
    int found = 0;
    Py_ssize_t w = 0, i = 0;
    for (;;) {
        Py_ssize_t j = i;
        while (j < n && v[j] != ';') j++;
        const unsigned char *pair = v + i;
        Py_ssize_t pn = j - i;
        strip_ows(&pair, &pn);
        const unsigned char *eq = memchr(pair, '=', pn);
        int ours = 0;
        if (eq != NULL) {
            Py_ssize_t kn = eq - pair;
            while (kn && (pair[kn - 1] == ' ' || pair[kn - 1] == '\t')) kn--;
            ours = kn == f->cookie_len && memcmp(pair, f->cookie, kn) == 0;
        }
        if (ours && !found) {
            const unsigned char *val = eq + 1;
            Py_ssize_t vn = pair + pn - val;
            strip_ows(&val, &vn);
            while (vn && val[0] == '"') val++, vn--;
            while (vn && val[vn - 1] == '"') vn--;
            *value = val;
            *value_len = vn;
            found = 1;
        } else if (!ours && pn) {
            if (w) out[w++] = ';', out[w++] = ' ';
            memcpy(out + w, pair, pn);
            w += pn;
        }
        if (j == n) break;
        i = j + 1;
    }
    *out_len = w;
    return found;
}

static char decline_mark;
#define DECLINE ((PyObject *)&decline_mark) /* not an object: "ask the Python parser" */

/* ---- requests (pacslb.core.http.parse_request) ------------------------------------------ */

static PyObject *request(PyObject *head, PyObject *cookie_name) {
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(head);
    Py_ssize_t len = PyBytes_GET_SIZE(head);
    Py_ssize_t eol = line_end(s, 0, len);
    if (eol < 0 || eol > MAX_REQUEST_LINE || len - eol > MAX_HEADER_SECTION) return DECLINE;

    /* method SP target SP HTTP/1.x */
    const unsigned char *sp1 = memchr(s, ' ', eol);
    if (sp1 == NULL) return DECLINE;
    Py_ssize_t mlen = sp1 - s;
    const unsigned char *sp2 = memchr(sp1 + 1, ' ', eol - mlen - 1);
    if (sp2 == NULL || (s + eol) - (sp2 + 1) != 8 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0) return DECLINE;
    int version;
    if (sp2[8] == '1')
        version = 11;
    else if (sp2[8] == '0')
        version = 10;
    else
        return DECLINE;
    if (sp1[1] != '/') return DECLINE; /* origin-form only here */
    PyObject *method = NULL;
    for (int i = 0; i < 8; i++) {
        if ((Py_ssize_t)strlen(method_names[i]) == mlen && memcmp(s, method_names[i], mlen) == 0) {
            method = methods[i];
            break;
        }
    }
    if (method == NULL) return DECLINE;

    fields f;
    fields_init(&f, head, eol, cookie_name);
    int hosts = 0, conn = 0, expect = 0, more;
    long long length = -1;
    const unsigned char *server_cookie = NULL; /* the persistence cookie's value */
    Py_ssize_t server_cookie_len = 0;
    unsigned char cookie_line[8 + 2 * MAX_COOKIE_LINE]; /* "Cookie: " and the other cookies */
    while ((more = next_field(&f)) > 0) {
        const unsigned char *v = f.v;
        Py_ssize_t vlen = f.vlen;
        int keep = 1;
        switch (field_kind(f.name, f.nlen)) {
            case F_HOST:
                hosts++;
                break;
            case F_CONTENT_LENGTH:
                if (length >= 0) return DECLINE; /* a duplicate */
                while (vlen && *v == ' ') v++, vlen--; /* leading SP only, as parse_length */
                length = digits(v, vlen);
                if (length < 0) return DECLINE;
                break;
            case F_CONNECTION: {
                int found = connection_options(v, vlen);
                if (found < 0) return DECLINE;
                conn |= found;
                keep = 0;
                break;
            }
            case F_COOKIE:
                if (f.cookie == NULL || !memmem(v, vlen, f.cookie, f.cookie_len)) break;
                /* One Cookie line of a usual size carries the name: taken out here. */
                if (server_cookie != NULL || vlen > MAX_COOKIE_LINE) return DECLINE;
                Py_ssize_t rest;
                if (!split_cookie(v, vlen, &f, &server_cookie, &server_cookie_len, cookie_line + 8,
                                  &rest))
                    break; /* the name, but not as a cookie's: forwarded as is */
                keep = 0;
                if (rest) { /* the other cookies go on, in a line of their own */
                    memcpy(cookie_line, "Cookie: ", 8);
                    f.kept[f.nkept].p = cookie_line;
                    f.kept[f.nkept].len = 8 + rest;
                    f.nkept++;
                    f.total += 8 + rest + 2;
                }
                break;
            case F_EXPECT:
                strip_ows(&v, &vlen);
                expect = NAME_IS(v, vlen, "100-continue");
                break;
            case F_HOP:
            case F_FORWARDED:
                keep = 0;
                break;
            case F_TRANSFER_ENCODING: /* a chunked request: rare, the Python parser */
            case F_UPGRADE:           /* a WebSocket: likewise */
                return DECLINE;
        }
        if (keep) keep_field(&f);
    }
    if (more < 0) return DECLINE;
    if (hosts > 1 || (hosts == 0 && version == 11)) return DECLINE;
    int keep_alive = version == 11 ? !(conn & 1) : (conn & 2) != 0;

    PyObject *items[10];
    items[0] = Py_NewRef(method);
    items[1] = PyBytes_FromStringAndSize((const char *)s, eol);
    items[2] = PyLong_FromLong(version);
    items[3] = kept_fields(&f);
    items[4] = PyLong_FromLong(length > 0 ? LENGTH : NO_BODY);
    items[5] = PyLong_FromLongLong(length > 0 ? length : 0);
    items[6] = PyBool_FromLong(keep_alive);
    items[7] = Py_NewRef(Py_None);
    items[8] = PyBool_FromLong(expect);
    items[9] = server_cookie == NULL ? Py_NewRef(Py_None)
                                     : PyUnicode_DecodeLatin1((const char *)server_cookie,
                                                              server_cookie_len, NULL);
    return named_tuple(RequestType, items, 10);
}

/* ---- responses (pacslb.core.http_response.parse_response) ------------------------------- */

static PyObject *response(PyObject *head, int head_request, PyObject *cookie_name) {
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(head);
    Py_ssize_t len = PyBytes_GET_SIZE(head);
    if (len < 12 || memcmp(s, "HTTP/1.", 7) != 0 || s[8] != ' ') return DECLINE;
    int version;
    if (s[7] == '1')
        version = 11;
    else if (s[7] == '0')
        version = 10;
    else
        return DECLINE;
    if (s[9] < '1' || s[9] > '9' || s[10] < '0' || s[10] > '9' || s[11] < '0' || s[11] > '9')
        return DECLINE;
    if (len > 12 && s[12] != ' ' && s[12] != '\r') return DECLINE;
    int status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
    if (status == 101) return DECLINE; /* a protocol switch: rare, the Python parser */
    Py_ssize_t eol = line_end(s, 0, len);
    if (eol < 0) return DECLINE;

    fields f;
    fields_init(&f, head, eol, cookie_name);
    int conn = 0, chunked = 0, more;
    long long length = -1;
    while ((more = next_field(&f)) > 0) {
        const unsigned char *v = f.v;
        Py_ssize_t vlen = f.vlen;
        int keep = 1;
        switch (field_kind(f.name, f.nlen)) {
            case F_CONTENT_LENGTH:
                if (length >= 0) return DECLINE; /* a duplicate */
                strip_ows(&v, &vlen);
                length = digits(v, vlen);
                if (length < 0) return DECLINE;
                break;
            case F_CONNECTION: {
                int found = connection_options(v, vlen);
                if (found < 0) return DECLINE;
                conn |= found;
                keep = 0;
                break;
            }
            case F_TRANSFER_ENCODING:
                strip_ows(&v, &vlen);
                if (chunked || !NAME_IS(v, vlen, "chunked")) return DECLINE;
                chunked = 1;
                keep = 0;
                break;
            case F_UPGRADE: /* (a 101 was left to Python above) */
            case F_HOP:
                keep = 0;
                break;
            case F_SET_COOKIE: /* the server's own persistence cookie: the Python parser */
                if (f.cookie == NULL) break;
                while (vlen && (*v == ' ' || *v == '\t')) v++, vlen--;
                if (vlen > f.cookie_len && memcmp(v, f.cookie, f.cookie_len) == 0 &&
                    v[f.cookie_len] == '=')
                    return DECLINE;
                break;
        }
        if (keep) keep_field(&f);
    }
    if (more < 0) return DECLINE;
    int keep_alive;
    if (!(conn & 8))
        keep_alive = version == 11;
    else
        keep_alive = version == 11 ? !(conn & 1) : (conn & 2) != 0;
    int framing;
    if (head_request || (status >= 100 && status < 200) || status == 204 || status == 304) {
        framing = NO_BODY;
    } else if (chunked) {
        if (length >= 0) return DECLINE; /* both: the Python parser drops the length */
        framing = CHUNKED;
    } else if (length >= 0) {
        framing = LENGTH;
    } else {
        framing = UNTIL_CLOSE;
        keep_alive = 0;
    }

    PyObject *items[8];
    items[0] = PyLong_FromLong(status);
    items[1] = PyBytes_FromStringAndSize((const char *)s + 9, eol - 9);
    items[2] = PyLong_FromLong(version);
    items[3] = kept_fields(&f);
    items[4] = PyLong_FromLong(framing);
    items[5] = PyLong_FromLongLong(length > 0 ? length : 0);
    items[6] = PyBool_FromLong(keep_alive);
    items[7] = Py_NewRef(Py_None);
    return named_tuple(ResponseType, items, 8);
}

/* ---- the module ------------------------------------------------------------------------- */

/* 1: the arguments are the fast path's (bytes, then bytes or None for the cookie name);
 * 0: anything else, left to the Python parser (which raises what Python raises); -1: error. */
static int usual_args(const char *fn, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t max,
                      int cookie_at) {
    if (RequestType == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pacslb.core._headfast.setup() was not called");
        return -1;
    }
    if (nargs < 1 || nargs > max) {
        PyErr_Format(PyExc_TypeError, "%s() takes 1 to %zd positional arguments", fn, max);
        return -1;
    }
    if (!PyBytes_CheckExact(args[0])) return 0;
    if (nargs > cookie_at && args[cookie_at] != Py_None && !PyBytes_CheckExact(args[cookie_at]))
        return 0;
    return 1;
}

static PyObject *do_request(PyObject *const *args, Py_ssize_t nargs) {
    return request(args[0], nargs > 1 ? args[1] : Py_None);
}

static PyObject *do_response(PyObject *const *args, Py_ssize_t nargs) {
    int head_request = 0;
    if (nargs > 1) {
        head_request = PyObject_IsTrue(args[1]);
        if (head_request < 0) return NULL;
    }
    return response(args[0], head_request, nargs > 2 ? args[2] : Py_None);
}

static PyObject *try_request(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int usual = usual_args("try_request", args, nargs, 2, 1);
    if (usual < 0) return NULL;
    PyObject *r = usual ? do_request(args, nargs) : DECLINE;
    return r == DECLINE ? Py_NewRef(Py_None) : r;
}

static PyObject *try_response(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int usual = usual_args("try_response", args, nargs, 3, 2);
    if (usual < 0) return NULL;
    PyObject *r = usual ? do_response(args, nargs) : DECLINE;
    return r == DECLINE ? Py_NewRef(Py_None) : r;
}

static PyObject *parse_request(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int usual = usual_args("parse_request", args, nargs, 2, 1);
    if (usual < 0) return NULL;
    PyObject *r = usual ? do_request(args, nargs) : DECLINE;
    return r == DECLINE ? PyObject_Vectorcall(py_parse_request, args, nargs, NULL) : r;
}

static PyObject *parse_response(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int usual = usual_args("parse_response", args, nargs, 3, 2);
    if (usual < 0) return NULL;
    PyObject *r = usual ? do_response(args, nargs) : DECLINE;
    return r == DECLINE ? PyObject_Vectorcall(py_parse_response, args, nargs, NULL) : r;
}

static PyObject *setup(PyObject *self, PyObject *args) {
    PyObject *req_t, *resp_t, *req_f, *resp_f;
    if (!PyArg_ParseTuple(args, "O!O!OO:setup", &PyType_Type, &req_t, &PyType_Type, &resp_t,
                          &req_f, &resp_f))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)req_t, &PyTuple_Type) ||
        !PyType_IsSubtype((PyTypeObject *)resp_t, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "setup(): Request and Response must be tuple types");
        return NULL;
    }
    Py_XSETREF(RequestType, Py_NewRef(req_t));
    Py_XSETREF(ResponseType, Py_NewRef(resp_t));
    Py_XSETREF(py_parse_request, Py_NewRef(req_f));
    Py_XSETREF(py_parse_response, Py_NewRef(resp_f));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"setup", setup, METH_VARARGS,
     "setup(Request, Response, parse_request, parse_response): the result types, and the "
     "Python parsers a declined head goes to."},
    {"try_request", (PyCFunction)(void (*)(void))try_request, METH_FASTCALL,
     "try_request(head, cookie_name=None) -> Request, or None for a head left to Python."},
    {"try_response", (PyCFunction)(void (*)(void))try_response, METH_FASTCALL,
     "try_response(head, head_request=False, cookie_name=None) -> Response, or None."},
    {"parse_request", (PyCFunction)(void (*)(void))parse_request, METH_FASTCALL,
     "parse_request(head, cookie_name=None): the fast path, else the Python parser."},
    {"parse_response", (PyCFunction)(void (*)(void))parse_response, METH_FASTCALL,
     "parse_response(head, head_request=False, cookie_name=None): likewise."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_headfast",
    .m_doc = "The usual HTTP heads, parsed in C (see the source).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__headfast(void) {
    init_tables();
    str_empty = PyBytes_FromStringAndSize("", 0);
    if (str_empty == NULL) return NULL;
    for (int i = 0; i < 8; i++) {
        methods[i] = PyBytes_FromString(method_names[i]);
        if (methods[i] == NULL) return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL || PyModule_AddIntConstant(m, "MAX_REQUEST_LINE", MAX_REQUEST_LINE) < 0 ||
        PyModule_AddIntConstant(m, "MAX_HEADER_SECTION", MAX_HEADER_SECTION) < 0 ||
        PyModule_AddIntConstant(m, "MAX_FIELDS", MAX_FIELDS) < 0) {
        Py_XDECREF(m);
        return NULL;
    }
    return m;
}
