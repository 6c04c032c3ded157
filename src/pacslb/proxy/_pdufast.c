/* The hot loop of the l7-dicom relay in C: whole P-DATA-TF PDUs from a socket into a pipe.
 *
 * pacslb.proxy.dicom_pumps.DicomPump follows PDU boundaries (PS3.8 §9.3.1: type, reserved,
 * 4-byte length): at each boundary it peeks the next header, then splices no further than the
 * PDU's end. In a C-STORE that is one turn per 16 KiB PDU, and the Python around the two
 * system calls of a turn cost about as much as the calls. This file runs those turns only;
 * every decision other than "another P-DATA-TF, move it" stays in Python: it stops at any other
 * PDU type (the tracker counts releases and aborts, and the first PDU), at a header split
 * across segments, when the socket is empty, at EOF, on an error, and after `limit` bytes.
 * A tree where this module is not built runs the same loop in Python.
 *
 * relay(src_fd, pipe_w, need, limit) -> (moved, need, p_data, stop)
 *   need   bytes left of the current PDU, header included (0: at a boundary)
 *   moved  bytes spliced into the pipe; p_data: P-DATA-TF headers passed
 *   stop   STOP_DRY (the socket is empty, as far as known), STOP_EOF, STOP_HEADER (a header
 *          Python must see: not P-DATA-TF, or fewer than 6 bytes of it), STOP_LIMIT
 * OSError for any other error of recv or splice.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/types.h>

#define HEADER 6
#define PEEK 256
#define CHUNK (1 << 20)
#define P_DATA_TF 0x04

enum { STOP_DRY = 0, STOP_EOF = 1, STOP_HEADER = 2, STOP_LIMIT = 3 };

static PyObject *relay(PyObject *self, PyObject *args) {
    int src, pipe_w;
    long long need, limit;
    if (!PyArg_ParseTuple(args, "iiLL", &src, &pipe_w, &need, &limit)) return NULL;
    unsigned char head[PEEK];
    long long moved = 0, p_data = 0, window = 0; /* window: bytes known in the socket, 0 unknown */
    int stop = STOP_LIMIT, err = 0;
    while (moved < limit) {
        if (need == 0) {
            ssize_t got = recv(src, head, PEEK, MSG_PEEK | MSG_DONTWAIT);
            if (got < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                    stop = STOP_DRY;
                } else {
                    err = errno;
                }
                break;
            }
            if (got == 0) { stop = STOP_EOF; break; }
            if (got < HEADER || head[0] != P_DATA_TF) { stop = STOP_HEADER; break; }
            need = HEADER + (((long long)head[2] << 24) | ((long long)head[3] << 16) |
                             ((long long)head[4] << 8) | (long long)head[5]);
            p_data++;
            window = got < PEEK ? got : 0;
        }
        long long room = limit - moved; /* never past `limit`: the caller's pipe has room */
        size_t want = (size_t)(need < CHUNK ? need : CHUNK);
        if ((long long)want > room) want = (size_t)room;
        ssize_t k = splice(src, NULL, pipe_w, NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (k < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                stop = STOP_DRY; /* the socket is empty (the caller keeps the pipe from filling) */
            } else {
                err = errno;
            }
            break;
        }
        if (k == 0) { stop = STOP_EOF; break; }
        need -= k;
        moved += k;
        if ((size_t)k < want) { stop = STOP_DRY; break; }
        if (window) {
            window -= k;
            if (window <= 0) { stop = STOP_DRY; break; }
        }
    }
    if (err) {
        /* What was moved is in the pipe: the caller accounts it before the error fails the
         * connection, so report both (the errno in the tuple's stop slot, negated). */
        stop = -err;
    }
    return Py_BuildValue("LLLi", moved, need, p_data, stop);
}

static PyMethodDef methods[] = {
    {"relay", relay, METH_VARARGS, "Whole P-DATA-TF PDUs from a socket into a pipe (see the file)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pdufast", "The l7-dicom relay's hot loop in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__pdufast(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "STOP_DRY", STOP_DRY) < 0 ||
        PyModule_AddIntConstant(m, "STOP_EOF", STOP_EOF) < 0 ||
        PyModule_AddIntConstant(m, "STOP_HEADER", STOP_HEADER) < 0 ||
        PyModule_AddIntConstant(m, "STOP_LIMIT", STOP_LIMIT) < 0 ||
        PyModule_AddIntConstant(m, "PEEK", PEEK) < 0 || PyModule_AddIntConstant(m, "CHUNK", CHUNK) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
