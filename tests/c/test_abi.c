/*
 * test_abi.c -- a real C host of the CRM module, exercising the whole C ABI.
 *
 * Build (tests/c_abi.rs does this):
 *   cc -std=c99 -Wall -Wextra -Werror -pedantic -pthread -Iinclude \
 *      tests/c/test_abi.c -Ltarget/debug -lcrm_module -Wl,-rpath,target/debug
 * Run:
 *   ./test_abi [threads [iterations]]      (defaults: 8 threads, 20 iterations)
 *
 * The last line printed is "N passed, M failed"; the exit status is non-zero
 * when anything failed.
 */
#define _POSIX_C_SOURCE 200809L

#include "crm_module.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DIR_MAX 1024  /* the temporary directory's path */
#define PATH_MAX_LEN 2048

/* ------------------------------------------------------------------------ */
/* Checks                                                                    */
/* ------------------------------------------------------------------------ */

static pthread_mutex_t g_check_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_passed = 0;
static int g_failed = 0;

static int check_at(int ok, const char *what, const char *file, int line) {
    pthread_mutex_lock(&g_check_lock);
    if (ok) {
        g_passed++;
    } else {
        g_failed++;
        fprintf(stderr, "FAIL %s:%d: %s\n", file, line, what);
    }
    pthread_mutex_unlock(&g_check_lock);
    return ok;
}

#define CHECK(cond) check_at((cond) ? 1 : 0, #cond, __FILE__, __LINE__)

/* A call returned `want`, with a non-empty message and the matching code. */
static void expect_err_at(int rc, int want, const char *what, const char *file, int line) {
    const char *msg = crm_last_error_message();
    char buf[512];
    int ok = rc == want && msg != NULL && msg[0] != '\0' && crm_last_error_code() == want;
    snprintf(buf, sizeof buf, "%s: got %d (last code %d, message \"%s\"), want %d", what, rc,
             crm_last_error_code(), msg ? msg : "(null)", want);
    check_at(ok, buf, file, line);
}

#define EXPECT_ERR(call, want) expect_err_at((call), (want), #call, __FILE__, __LINE__)

/* A call returned CRM_OK and left no error behind. */
static int expect_ok_at(int rc, const char *what, const char *file, int line) {
    const char *msg = crm_last_error_message();
    char buf[512];
    int ok = rc == CRM_OK && crm_last_error_code() == CRM_OK && msg != NULL && msg[0] == '\0';
    snprintf(buf, sizeof buf, "%s: got %d (message \"%s\")", what, rc, msg ? msg : "(null)");
    return check_at(ok, buf, file, line);
}

#define EXPECT_OK(call) expect_ok_at((call), #call, __FILE__, __LINE__)

/* Reads the integer after `"field":` in a JSON text (-1 if absent). */
static long json_int_field(const char *json, const char *field) {
    char pat[64];
    const char *p;
    snprintf(pat, sizeof pat, "\"%s\":", field);
    p = json ? strstr(json, pat) : NULL;
    if (p == NULL) {
        return -1;
    }
    return strtol(p + strlen(pat), NULL, 10);
}

static int count_occurrences(const char *hay, const char *needle) {
    int n = 0;
    const char *p = hay;
    size_t len = strlen(needle);
    while (p != NULL && (p = strstr(p, needle)) != NULL) {
        n++;
        p += len;
    }
    return n;
}

/* ------------------------------------------------------------------------ */
/* The host: callbacks that record what they receive                         */
/* ------------------------------------------------------------------------ */

typedef struct recorder {
    pthread_mutex_t lock;
    crm_module *m;
    char **keys;          /* idempotency keys of delivered messages */
    int n_keys;
    int cap_keys;
    int n_logs;
    int bad_payloads;     /* payloads that did not repeat their key */
    int reentry_checked;  /* the first callback probes re-entrant calls */
    int reentry_ok;
    int64_t clock_seen;   /* crm_clock_now() called from inside a callback */
} recorder;

static int on_deliver_message(void *user_data, const char *key, const char *message_json) {
    recorder *r = (recorder *)user_data;
    int64_t now = 0;
    int first;
    /* Re-entering the module from a callback is allowed... */
    int rc_now = crm_clock_now(r->m, &now);

    pthread_mutex_lock(&r->lock);
    first = !r->reentry_checked;
    r->reentry_checked = 1;
    pthread_mutex_unlock(&r->lock);
    if (first) {
        /* ...except what would deadlock: refused, not hung. */
        crm_host_callbacks none;
        int rc_set;
        memset(&none, 0, sizeof none);
        none.version = CRM_HOST_CALLBACKS_VERSION;
        rc_set = crm_set_host_callbacks(r->m, &none);
        int set_refused = rc_set == CRM_ERR_CONFLICT && crm_last_error_message()[0] != '\0';
        crm_close(r->m); /* ignored inside a callback */
        int close_refused = crm_last_error_code() == CRM_ERR_CONFLICT;
        /* Both would wait for this very callback. */
        int idle_refused = crm_wait_idle(r->m, 1000) == CRM_ERR_CONFLICT;
        int advance_refused = crm_clock_advance(r->m, 1) == CRM_ERR_CONFLICT;
        pthread_mutex_lock(&r->lock);
        r->reentry_ok = set_refused && close_refused && idle_refused && advance_refused;
        pthread_mutex_unlock(&r->lock);
    }

    pthread_mutex_lock(&r->lock);
    if (rc_now == CRM_OK) {
        r->clock_seen = now;
    }
    if (strstr(message_json, key) == NULL) {
        r->bad_payloads++;
    }
    if (r->n_keys == r->cap_keys) {
        int cap = r->cap_keys ? r->cap_keys * 2 : 16;
        char **grown = (char **)realloc(r->keys, (size_t)cap * sizeof *grown);
        if (grown == NULL) {
            pthread_mutex_unlock(&r->lock);
            return CRM_EFFECT_RETRY;
        }
        r->keys = grown;
        r->cap_keys = cap;
    }
    r->keys[r->n_keys] = strdup(key);
    if (r->keys[r->n_keys] != NULL) {
        r->n_keys++;
    }
    pthread_mutex_unlock(&r->lock);
    return CRM_EFFECT_ACCEPTED;
}

static void on_log(void *user_data, int level, const char *message) {
    recorder *r = (recorder *)user_data;
    (void)level;
    (void)message;
    pthread_mutex_lock(&r->lock);
    r->n_logs++;
    pthread_mutex_unlock(&r->lock);
}

static int recorded_messages(recorder *r) {
    int n;
    pthread_mutex_lock(&r->lock);
    n = r->n_keys;
    pthread_mutex_unlock(&r->lock);
    return n;
}

static int keys_distinct(recorder *r) {
    int i, j, ok = 1;
    pthread_mutex_lock(&r->lock);
    for (i = 0; i < r->n_keys && ok; i++) {
        for (j = i + 1; j < r->n_keys; j++) {
            if (strcmp(r->keys[i], r->keys[j]) == 0) {
                ok = 0;
                break;
            }
        }
    }
    pthread_mutex_unlock(&r->lock);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */

static const char *CONFIG_MANUAL = "{\"clock\":{\"mode\":\"manual\",\"start\":\"2026-01-05T08:00:00Z\"},\"initial_settings\":{\"practice_name\":\"Riverside\",\"time_zone\":\"UTC\",\"email_footer\":{\"postal_address\":\"12 River Road, Boston\",\"text\":\"Unsubscribe: {{unsubscribe_link}}\"},\"tracking\":{\"base_url\":\"https://t.example.org\",\"email_opens\":true}}}";
static const int64_t START_MS = INT64_C(1767600000000); /* 2026-01-05T08:00:00Z */
static const int64_t DAY_MS = INT64_C(86400000);

static const char *CREATE_LIST = "{\"command\":\"list.create\",\"list_id\":\"l1\",\"name\":\"VIP\"}";
static const char *CREATE_AUTOMATION =
    "{\"command\":\"automation.create\",\"automation_id\":\"a1\",\"definition\":{"
    "\"name\":\"Welcome\",\"trigger\":{\"type\":\"contact_created\"},"
    "\"run_window\":{\"mode\":\"any_time\"},\"steps\":["
    "{\"type\":\"send_email\",\"subject\":\"Hi\",\"body\":\"Hello {{firstname}}\"},"
    "{\"type\":\"delay\",\"amount\":1,\"unit\":\"days\"},"
    "{\"type\":\"send_sms\",\"message\":\"Hi\"}]}}";
static const char *ACTIVATE = "{\"command\":\"automation.activate\",\"automation_id\":\"a1\"}";
static const char *EVENT_C1 =
    "{\"event_id\":\"e1\",\"type\":\"contact.upserted\",\"contact\":{\"id\":\"c1\","
    "\"first_name\":\"Ann\",\"email\":\"ann@example.com\",\"phone\":\"+16175550101\","
    "\"email_subscription\":\"subscribed\",\"sms_subscription\":\"subscribed\"}}";

/* A hit on a tracking URL whose token the module never signed. */
static const char *FORGED_HIT = "{\"method\":\"GET\",\"path\":\"/c/forged-token\",\"user_agent\":\"test\"}";

/* A view as a fresh string (NULL on failure). */
static char *view(crm_module *m, const char *name) {
    char *out = NULL;
    if (crm_query_view(m, name, NULL, &out) != CRM_OK) {
        return NULL;
    }
    return out;
}

static long enrolled_in_welcome(crm_module *m) {
    char *json = view(m, "automation_list");
    long n = json_int_field(json, "enrolled");
    crm_string_free(json);
    return n;
}

/* Pushes an event and checks its outcome. */
static void push_expect(crm_module *m, const char *event, const char *outcome) {
    char *out = NULL;
    char want[64];
    if (EXPECT_OK(crm_push_event(m, event, &out))) {
        snprintf(want, sizeof want, "\"outcome\":\"%s\"", outcome);
        if (!CHECK(out != NULL && strstr(out, want) != NULL)) {
            fprintf(stderr, "  result: %s (wanted %s)\n", out ? out : "(null)", want);
        }
    }
    crm_string_free(out);
}

static int file_exists(const char *path) {
    return access(path, F_OK) == 0;
}

/* ------------------------------------------------------------------------ */
/* Single-threaded part                                                      */
/* ------------------------------------------------------------------------ */

static void test_version(void) {
    const char *v = crm_version();
    CHECK(v != NULL && v[0] != '\0');
    CHECK(crm_version_number() == CRM_VERSION_NUMBER);
    CHECK(crm_last_error_code() == CRM_OK);
    CHECK(crm_last_error_message() != NULL && crm_last_error_message()[0] == '\0');
}

static void test_open_errors(const char *dir) {
    char path[PATH_MAX_LEN];
    int dummy = 0;
    crm_module *m = (crm_module *)(void *)&dummy;

    snprintf(path, sizeof path, "%s/never.db", dir);
    EXPECT_ERR(crm_open(NULL, NULL, &m), CRM_ERR_NULL);
    CHECK(m == NULL);
    EXPECT_ERR(crm_open(path, NULL, NULL), CRM_ERR_NULL);
    m = (crm_module *)(void *)&dummy;
    EXPECT_ERR(crm_open(path, "{\"clock\":", &m), CRM_ERR_INVALID);
    CHECK(m == NULL);
    EXPECT_ERR(crm_open(path, "{\"clock\":{\"mode\":\"manual\",\"start\":\"not a time\"}}", &m),
               CRM_ERR_INVALID);
    EXPECT_ERR(crm_open(path, "{\"no_such_option\":1}", &m), CRM_ERR_INVALID);
    EXPECT_ERR(crm_open(path, "{\"clock\":\"\xff\xfe\"}", &m), CRM_ERR_UTF8);
    EXPECT_ERR(crm_open("", NULL, &m), CRM_ERR_INVALID);
    CHECK(m == NULL);
    /* A rejected open creates nothing. */
    CHECK(!file_exists(path));
    /* The error is cleared by the next successful call on this thread. */
    EXPECT_ERR(crm_open(NULL, NULL, &m), CRM_ERR_NULL);
    CHECK(crm_version() != NULL); /* does not touch the error */
    CHECK(crm_last_error_code() == CRM_ERR_NULL);
}

static void test_system_clock(const char *dir) {
    char path[PATH_MAX_LEN];
    crm_module *m = NULL;
    int64_t now = 0;
    snprintf(path, sizeof path, "%s/system.db", dir);
    if (!EXPECT_OK(crm_open(path, NULL, &m))) {
        return;
    }
    EXPECT_OK(crm_clock_now(m, &now));
    CHECK(now > START_MS - 365 * DAY_MS); /* wall-clock time */
    EXPECT_ERR(crm_clock_advance(m, DAY_MS), CRM_ERR_CONFLICT);
    /* One handle per database file: a second is refused while it is open. */
    {
        crm_module *second = m;
        EXPECT_ERR(crm_open(path, NULL, &second), CRM_ERR_CONFLICT);
        CHECK(second == NULL);
    }
    crm_close(m);
    CHECK(crm_last_error_code() == CRM_OK);
    m = NULL;
    if (EXPECT_OK(crm_open(path, NULL, &m))) {
        crm_close(m);
    }
}

/* Every error path on an open module; each leaves the state unchanged. */
static void test_error_paths(crm_module *m, recorder *rec) {
    char *out = (char *)"sentinel";
    char *before = view(m, "automation_list");
    char *after;
    int64_t now_before = 0, now_after = 0;
    int messages_before;
    char *huge;
    size_t huge_len = (size_t)CRM_MAX_INPUT_BYTES + 1;
    char big_event[300 * 1024];
    int n;
    crm_host_callbacks bad;

    CHECK(before != NULL);
    EXPECT_OK(crm_wait_idle(m, 30000));
    messages_before = recorded_messages(rec);
    EXPECT_OK(crm_clock_now(m, &now_before));

    /* NULL arguments. */
    EXPECT_ERR(crm_push_event(NULL, EVENT_C1, &out), CRM_ERR_NULL);
    CHECK(out == NULL);
    EXPECT_ERR(crm_push_event(m, NULL, &out), CRM_ERR_NULL);
    EXPECT_ERR(crm_push_events(m, NULL, &out), CRM_ERR_NULL);
    EXPECT_ERR(crm_push_events(NULL, "[]", &out), CRM_ERR_NULL);
    EXPECT_ERR(crm_execute(m, NULL, &out), CRM_ERR_NULL);
    EXPECT_ERR(crm_execute(NULL, ACTIVATE, &out), CRM_ERR_NULL);
    EXPECT_ERR(crm_tracking_hit(NULL, FORGED_HIT, &out), CRM_ERR_NULL);
    CHECK(out == NULL);
    EXPECT_ERR(crm_tracking_hit(m, NULL, &out), CRM_ERR_NULL);
    EXPECT_ERR(crm_tracking_hit(m, FORGED_HIT, NULL), CRM_ERR_NULL);
    /* Not JSON, and not UTF-8. */
    EXPECT_ERR(crm_tracking_hit(m, "{\"method\":", &out), CRM_ERR_INVALID);
    CHECK(out == NULL);
    EXPECT_ERR(crm_tracking_hit(m, "{\"method\":\"GET\",\"path\":\"/o/\xff\"}", &out), CRM_ERR_UTF8);
    CHECK(out == NULL);
    /* out_json is required: the command must not run without it. */
    EXPECT_ERR(crm_execute(m,
                           "{\"command\":\"automation.create\",\"automation_id\":\"a_null_out\","
                           "\"definition\":{\"name\":\"Ghost\",\"trigger\":{\"type\":"
                           "\"contact_created\"},\"steps\":[]}}",
                           NULL),
               CRM_ERR_NULL);
    EXPECT_ERR(crm_query_view(m, NULL, NULL, &out), CRM_ERR_NULL);
    EXPECT_ERR(crm_query_view(m, "automation_list", NULL, NULL), CRM_ERR_NULL);
    EXPECT_ERR(crm_query_view(NULL, "automation_list", NULL, &out), CRM_ERR_NULL);
    EXPECT_ERR(crm_clock_now(m, NULL), CRM_ERR_NULL);
    EXPECT_ERR(crm_clock_now(NULL, &now_after), CRM_ERR_NULL);
    CHECK(now_after == 0);
    EXPECT_ERR(crm_clock_advance(NULL, 1), CRM_ERR_NULL);
    EXPECT_ERR(crm_wait_idle(NULL, 1), CRM_ERR_NULL);
    EXPECT_ERR(crm_set_host_callbacks(NULL, NULL), CRM_ERR_NULL);
    CHECK(out == NULL);

    /* Invalid UTF-8: rejected before parsing; the event id is not consumed. */
    out = (char *)"sentinel";
    EXPECT_ERR(crm_push_event(m,
                              "{\"event_id\":\"x1\",\"type\":\"contact.upserted\",\"contact\":"
                              "{\"id\":\"c1\",\"first_name\":\"\xc3\x28\"}}",
                              &out),
               CRM_ERR_UTF8);
    CHECK(out == NULL);
    EXPECT_ERR(crm_execute(m, "{\"command\":\"list.create\",\"name\":\"\xff\"}", &out), CRM_ERR_UTF8);
    EXPECT_ERR(crm_query_view(m, "automation_\xfe", NULL, &out), CRM_ERR_UTF8);
    EXPECT_ERR(crm_query_view(m, "automation_list", "{\"search\":\"\x80\"}", &out), CRM_ERR_UTF8);

    /* Invalid JSON and invalid content. */
    EXPECT_ERR(crm_push_event(m, "{\"event_id\":", &out), CRM_ERR_INVALID);
    EXPECT_ERR(crm_push_event(m, "{\"event_id\":\"x2\",\"type\":\"no.such.type\"}", &out),
               CRM_ERR_INVALID);
    EXPECT_ERR(crm_push_events(m, "{}", &out), CRM_ERR_INVALID);
    /* A batch is atomic: one bad event rejects the whole batch. */
    EXPECT_ERR(crm_push_events(m,
                               "[{\"event_id\":\"y1\",\"type\":\"contact.upserted\",\"contact\":"
                               "{\"id\":\"c1\",\"first_name\":\"Ann\"}},"
                               "{\"event_id\":\"y2\",\"type\":\"no.such.type\"}]",
                               &out),
               CRM_ERR_INVALID);
    EXPECT_ERR(crm_execute(m, "not json", &out), CRM_ERR_INVALID);
    EXPECT_ERR(crm_execute(m, "{\"command\":\"no.such.command\"}", &out), CRM_ERR_INVALID);
    EXPECT_ERR(crm_query_view(m, "automation_list", "[1,", &out), CRM_ERR_INVALID);
    CHECK(out == NULL);

    /* Unknown ids. */
    EXPECT_ERR(crm_execute(m, "{\"command\":\"automation.activate\",\"automation_id\":\"nope\"}", &out),
               CRM_ERR_NOT_FOUND);
    EXPECT_ERR(crm_execute(m, "{\"command\":\"list.rename\",\"list_id\":\"nope\",\"name\":\"X\"}", &out),
               CRM_ERR_NOT_FOUND);
    EXPECT_ERR(crm_query_view(m, "no_such_view", NULL, &out), CRM_ERR_NOT_FOUND);
    CHECK(out == NULL);

    /* Oversized input: over CRM_MAX_INPUT_BYTES, and over the event limit. */
    huge = (char *)malloc(huge_len + 1);
    if (CHECK(huge != NULL)) {
        memset(huge, ' ', huge_len);
        huge[huge_len] = '\0';
        EXPECT_ERR(crm_push_event(m, huge, &out), CRM_ERR_TOO_LARGE);
        EXPECT_ERR(crm_push_events(m, huge, &out), CRM_ERR_TOO_LARGE);
        EXPECT_ERR(crm_execute(m, huge, &out), CRM_ERR_TOO_LARGE);
        EXPECT_ERR(crm_query_view(m, "automation_list", huge, &out), CRM_ERR_TOO_LARGE);
        free(huge);
    }
    n = snprintf(big_event, sizeof big_event,
                 "{\"event_id\":\"x3\",\"type\":\"contact.upserted\",\"contact\":{\"id\":\"c1\","
                 "\"first_name\":\"");
    memset(big_event + n, 'A', sizeof big_event - (size_t)n - 8);
    strcpy(big_event + sizeof big_event - 8, "\"}}");
    EXPECT_ERR(crm_push_event(m, big_event, &out), CRM_ERR_TOO_LARGE);
    CHECK(out == NULL);

    /* Bad arguments. */
    EXPECT_ERR(crm_clock_advance(m, -1), CRM_ERR_INVALID);
    EXPECT_ERR(crm_wait_idle(m, -1), CRM_ERR_INVALID);
    memset(&bad, 0, sizeof bad);
    bad.version = CRM_HOST_CALLBACKS_VERSION + 1;
    EXPECT_ERR(crm_set_host_callbacks(m, &bad), CRM_ERR_INVALID);

    /* Nothing changed: same clock, same list view, no new message, the
       callbacks still registered, and the rejected event ids are free. */
    EXPECT_OK(crm_clock_now(m, &now_after));
    CHECK(now_after == now_before);
    after = view(m, "automation_list");
    CHECK(after != NULL && before != NULL && strcmp(before, after) == 0);
    CHECK(after != NULL && strstr(after, "Ghost") == NULL);
    crm_string_free(before);
    crm_string_free(after);
    push_expect(m,
                "{\"event_id\":\"x1\",\"type\":\"contact.upserted\",\"contact\":{\"id\":\"c1\","
                "\"first_name\":\"Ann\"}}",
                "applied");
    push_expect(m,
                "{\"event_id\":\"x3\",\"type\":\"contact.upserted\",\"contact\":{\"id\":\"c1\","
                "\"first_name\":\"Ann\"}}",
                "applied");
    out = NULL;
    if (EXPECT_OK(crm_push_events(m,
                                  "[{\"event_id\":\"y1\",\"type\":\"contact.upserted\",\"contact\":"
                                  "{\"id\":\"c1\",\"first_name\":\"Ann\"}},"
                                  "{\"event_id\":\"y2\",\"type\":\"contact.upserted\",\"contact\":"
                                  "{\"id\":\"c1\",\"first_name\":\"Ann\"}}]",
                                  &out))) {
        CHECK(out != NULL && count_occurrences(out, "\"outcome\":\"applied\"") == 2);
    }
    crm_string_free(out);
    EXPECT_OK(crm_wait_idle(m, 30000));
    CHECK(recorded_messages(rec) == messages_before);
    crm_string_free(NULL); /* no-op */
}

static void test_host_flow(const char *dir, recorder *rec) {
    char path[PATH_MAX_LEN];
    crm_module *m = NULL;
    crm_host_callbacks cb;
    char *out = NULL;
    int64_t now = 0;

    snprintf(path, sizeof path, "%s/crm.db", dir);
    if (!EXPECT_OK(crm_open(path, CONFIG_MANUAL, &m))) {
        return;
    }
    rec->m = m;
    EXPECT_OK(crm_clock_now(m, &now));
    CHECK(now == START_MS);

    memset(&cb, 0, sizeof cb);
    cb.version = CRM_HOST_CALLBACKS_VERSION;
    cb.user_data = rec;
    cb.deliver_message = on_deliver_message;
    cb.write_property = NULL; /* not handled: answered RETRY */
    cb.create_task = NULL;
    cb.log = on_log;
    EXPECT_OK(crm_set_host_callbacks(m, &cb));

    if (EXPECT_OK(crm_execute(m, CREATE_LIST, &out))) {
        CHECK(out != NULL && strstr(out, "l1") != NULL);
    }
    crm_string_free(out);
    out = NULL;
    if (EXPECT_OK(crm_execute(m, CREATE_AUTOMATION, &out))) {
        CHECK(out != NULL && strstr(out, "\"automation_id\":\"a1\"") != NULL);
    }
    crm_string_free(out);
    out = NULL;
    if (EXPECT_OK(crm_execute(m, ACTIVATE, &out))) {
        CHECK(out != NULL && strstr(out, "active") != NULL);
    }
    crm_string_free(out);
    out = NULL;

    push_expect(m, EVENT_C1, "applied");
    push_expect(m, EVENT_C1, "duplicate");
    EXPECT_OK(crm_wait_idle(m, 30000));
    CHECK(recorded_messages(rec) == 1); /* the email */

    EXPECT_OK(crm_clock_advance(m, 2 * DAY_MS));
    EXPECT_OK(crm_clock_now(m, &now));
    CHECK(now == START_MS + 2 * DAY_MS);
    EXPECT_OK(crm_wait_idle(m, 30000));
    CHECK(recorded_messages(rec) == 2); /* the email, then the SMS a day later */
    CHECK(keys_distinct(rec));
    pthread_mutex_lock(&rec->lock);
    CHECK(rec->bad_payloads == 0);
    CHECK(rec->reentry_checked && rec->reentry_ok);
    CHECK(rec->clock_seen >= START_MS);
    pthread_mutex_unlock(&rec->lock);

    if (EXPECT_OK(crm_query_view(m, "automation_list", "{}", &out))) {
        CHECK(out != NULL && strstr(out, "Welcome") != NULL);
        CHECK(json_int_field(out, "enrolled") == 1);
    }
    crm_string_free(out);
    out = NULL;

    test_error_paths(m, rec);

    /* Clearing the callbacks, then closing. */
    EXPECT_OK(crm_set_host_callbacks(m, NULL));
    crm_close(m);
    rec->m = NULL;
}

/* ------------------------------------------------------------------------ */
/* Multi-threaded part                                                       */
/* ------------------------------------------------------------------------ */

typedef struct worker_arg {
    crm_module *m;
    const crm_host_callbacks *cb;
    const char *dir;
    int index;
    int iterations;
    int applied;
    int added_to_list;
} worker_arg;

/* crm_open and crm_close on a handle of this thread's own, concurrently with
   the other threads (crm_open and crm_version* are callable from any thread). */
static void own_module(worker_arg *a) {
    char path[PATH_MAX_LEN];
    crm_module *own = NULL;
    int64_t now = 0;
    CHECK(strcmp(crm_version(), "") != 0 && crm_version_number() == CRM_VERSION_NUMBER);
    snprintf(path, sizeof path, "%s/thread%d.db", a->dir, a->index);
    if (CHECK(crm_open(path, CONFIG_MANUAL, &own) == CRM_OK && own != NULL)) {
        CHECK(crm_clock_advance(own, DAY_MS) == CRM_OK);
        CHECK(crm_clock_now(own, &now) == CRM_OK && now == START_MS + DAY_MS);
        crm_close(own);
    }
}

static void *worker_main(void *p) {
    worker_arg *a = (worker_arg *)p;
    char event[512];
    char batch[1024];
    char *out;
    int i;
    int64_t now;
    struct timespec pause_1ms;

    pause_1ms.tv_sec = 0;
    pause_1ms.tv_nsec = 1000000;
    own_module(a);
    for (i = 0; i < a->iterations; i++) {
        snprintf(event, sizeof event,
                 "{\"event_id\":\"t%d-%d\",\"type\":\"contact.upserted\",\"contact\":{"
                 "\"id\":\"tc%d-%d\",\"first_name\":\"T\",\"email\":\"t%d.%d@example.com\","
                 "\"email_subscription\":\"subscribed\"}}",
                 a->index, i, a->index, i, a->index, i);
        out = NULL;
        if (crm_push_event(a->m, event, &out) == CRM_OK && out != NULL &&
            strstr(out, "\"outcome\":\"applied\"") != NULL) {
            a->applied++;
        } else {
            check_at(0, "threaded push applied", __FILE__, __LINE__);
        }
        crm_string_free(out);

        out = NULL;
        if (CHECK(crm_query_view(a->m, "automation_list", NULL, &out) == CRM_OK)) {
            CHECK(out != NULL && strstr(out, "Welcome") != NULL);
        }
        crm_string_free(out);

        /* A forged token is answered 404, not refused. */
        out = NULL;
        if (CHECK(crm_tracking_hit(a->m, FORGED_HIT, &out) == CRM_OK)) {
            CHECK(out != NULL && strstr(out, "\"status\":404") != NULL);
        }
        crm_string_free(out);
        CHECK(crm_clock_now(a->m, &now) == CRM_OK && now >= START_MS);

        /* Commands, clock advances (1 ms each: nothing falls due), waits and
           re-registering the callbacks, all concurrently on the one handle. */
        snprintf(event, sizeof event,
                 "{\"command\":\"list.add_contacts\",\"list_id\":\"l1\",\"contact_ids\":[\"tc%d-%d\"]}",
                 a->index, i);
        out = NULL;
        if (CHECK(crm_execute(a->m, event, &out) == CRM_OK)) {
            if (CHECK(out != NULL && json_int_field(out, "changed") == 1)) {
                a->added_to_list++;
            }
        }
        crm_string_free(out);
        CHECK(crm_clock_advance(a->m, 1) == CRM_OK);
        if (i % 5 == 0) {
            CHECK(crm_set_host_callbacks(a->m, a->cb) == CRM_OK);
            CHECK(crm_wait_idle(a->m, 60000) == CRM_OK);
        }

        if (i == 0) {
            /* Each thread sees its own last error, whatever the others do. */
            out = NULL;
            CHECK(crm_push_event(a->m, "{broken", &out) == CRM_ERR_INVALID);
            nanosleep(&pause_1ms, NULL);
            CHECK(crm_last_error_code() == CRM_ERR_INVALID);
            CHECK(crm_last_error_message()[0] != '\0');
            CHECK(out == NULL);
        }
    }

    snprintf(batch, sizeof batch,
             "[{\"event_id\":\"tb%d-0\",\"type\":\"contact.upserted\",\"contact\":{\"id\":\"tbc%d-0\","
             "\"first_name\":\"B\",\"email\":\"b%d.0@example.com\",\"email_subscription\":\"subscribed\"}},"
             "{\"event_id\":\"tb%d-1\",\"type\":\"contact.upserted\",\"contact\":{\"id\":\"tbc%d-1\","
             "\"first_name\":\"B\",\"email\":\"b%d.1@example.com\",\"email_subscription\":\"subscribed\"}}]",
             a->index, a->index, a->index, a->index, a->index, a->index);
    out = NULL;
    if (CHECK(crm_push_events(a->m, batch, &out) == CRM_OK)) {
        int n = out ? count_occurrences(out, "\"outcome\":\"applied\"") : 0;
        CHECK(n == 2);
        a->applied += n;
    }
    crm_string_free(out);
    return NULL;
}

static void test_threads(const char *dir, recorder *rec, int threads, int iterations) {
    char path[PATH_MAX_LEN];
    crm_module *m = NULL;
    crm_host_callbacks cb;
    pthread_t *tids;
    worker_arg *args;
    int i, total = 0, expected = threads * (iterations + 2);
    int messages_before;
    long enrolled_before, enrolled_after;
    char *out = NULL;
    int64_t now_before = 0, now_after = 0;
    int added = 0;

    snprintf(path, sizeof path, "%s/crm.db", dir);
    /* Reopen the same database: the automation is still there. */
    if (!EXPECT_OK(crm_open(path, CONFIG_MANUAL, &m))) {
        return;
    }
    rec->m = m;
    memset(&cb, 0, sizeof cb);
    cb.version = CRM_HOST_CALLBACKS_VERSION;
    cb.user_data = rec;
    cb.deliver_message = on_deliver_message;
    cb.log = on_log;
    EXPECT_OK(crm_set_host_callbacks(m, &cb));
    EXPECT_OK(crm_wait_idle(m, 30000));
    messages_before = recorded_messages(rec);
    enrolled_before = enrolled_in_welcome(m);
    CHECK(enrolled_before == 1);

    tids = (pthread_t *)calloc((size_t)threads, sizeof *tids);
    args = (worker_arg *)calloc((size_t)threads, sizeof *args);
    if (!CHECK(tids != NULL && args != NULL)) {
        free(tids);
        free(args);
        crm_close(m);
        return;
    }
    EXPECT_OK(crm_clock_now(m, &now_before));
    for (i = 0; i < threads; i++) {
        args[i].m = m;
        args[i].cb = &cb;
        args[i].dir = dir;
        args[i].index = i;
        args[i].iterations = iterations;
        CHECK(pthread_create(&tids[i], NULL, worker_main, &args[i]) == 0);
    }
    for (i = 0; i < threads; i++) {
        pthread_join(tids[i], NULL);
        total += args[i].applied;
        added += args[i].added_to_list;
    }
    CHECK(added == threads * iterations);
    /* Every 1 ms advance counted exactly once. */
    EXPECT_OK(crm_clock_now(m, &now_after));
    CHECK(now_after == now_before + (int64_t)threads * iterations);
    CHECK(total == expected);
    if (total != expected) {
        fprintf(stderr, "  applied %d of %d\n", total, expected);
    }

    EXPECT_OK(crm_wait_idle(m, 60000));
    enrolled_after = enrolled_in_welcome(m);
    CHECK(enrolled_after == enrolled_before + expected);
    if (enrolled_after != enrolled_before + expected) {
        fprintf(stderr, "  enrolled %ld -> %ld, expected +%d\n", enrolled_before, enrolled_after, expected);
    }
    CHECK(recorded_messages(rec) == messages_before + expected); /* one welcome email each */
    CHECK(keys_distinct(rec));

    /* Re-pushing any of them is a duplicate; its id used for another event
       is refused. */
    out = NULL;
    if (EXPECT_OK(crm_push_event(m,
                                 "{\"event_id\":\"t0-0\",\"type\":\"contact.upserted\",\"contact\":{"
                                 "\"id\":\"tc0-0\",\"first_name\":\"T\",\"email\":\"t0.0@example.com\","
                                 "\"email_subscription\":\"subscribed\"}}",
                                 &out))) {
        CHECK(out != NULL && strstr(out, "\"outcome\":\"duplicate\"") != NULL);
    }
    crm_string_free(out);
    out = NULL;
    EXPECT_ERR(crm_push_event(m,
                              "{\"event_id\":\"t0-0\",\"type\":\"contact.upserted\",\"contact\":"
                              "{\"id\":\"tc0-0\",\"first_name\":\"T\"}}",
                              &out),
               CRM_ERR_CONFLICT);
    CHECK(out == NULL);
    crm_string_free(out);

    free(tids);
    free(args);
    crm_close(m); /* closing with callbacks registered */
    rec->m = NULL;
}

/* ------------------------------------------------------------------------ */
/* crm_close while a callback runs and calls into the handle                 */
/* ------------------------------------------------------------------------ */

typedef struct closing_host {
    pthread_mutex_t lock;
    pthread_cond_t entered_cond;
    crm_module *m;
    int entered;
    int view_rc;
} closing_host;

static int on_deliver_then_query(void *user_data, const char *key, const char *message_json) {
    closing_host *h = (closing_host *)user_data;
    struct timespec pause_100ms = {0, 100000000L};
    char *out = NULL;
    int rc;
    (void)key;
    (void)message_json;
    pthread_mutex_lock(&h->lock);
    h->entered = 1;
    pthread_cond_signal(&h->entered_cond);
    pthread_mutex_unlock(&h->lock);
    /* crm_close() has been called by now: the handle must still be whole. */
    nanosleep(&pause_100ms, NULL);
    rc = crm_query_view(h->m, "automation_list", NULL, &out);
    crm_string_free(out);
    pthread_mutex_lock(&h->lock);
    h->view_rc = rc;
    pthread_mutex_unlock(&h->lock);
    return CRM_EFFECT_ACCEPTED;
}

static void test_close_during_callback(const char *dir) {
    char path[PATH_MAX_LEN];
    crm_module *m = NULL;
    crm_host_callbacks cb;
    closing_host h;
    char *out = NULL;

    snprintf(path, sizeof path, "%s/closing.db", dir);
    if (!EXPECT_OK(crm_open(path, CONFIG_MANUAL, &m))) {
        return;
    }
    memset(&h, 0, sizeof h);
    pthread_mutex_init(&h.lock, NULL);
    pthread_cond_init(&h.entered_cond, NULL);
    h.m = m;
    h.view_rc = -1;
    memset(&cb, 0, sizeof cb);
    cb.version = CRM_HOST_CALLBACKS_VERSION;
    cb.user_data = &h;
    cb.deliver_message = on_deliver_then_query;
    EXPECT_OK(crm_set_host_callbacks(m, &cb));
    EXPECT_OK(crm_execute(m, CREATE_AUTOMATION, &out));
    crm_string_free(out);
    out = NULL;
    EXPECT_OK(crm_execute(m, ACTIVATE, &out));
    crm_string_free(out);
    push_expect(m, EVENT_C1, "applied");
    pthread_mutex_lock(&h.lock);
    while (!h.entered) {
        pthread_cond_wait(&h.entered_cond, &h.lock);
    }
    pthread_mutex_unlock(&h.lock);
    /* Closes while the callback is in flight: it waits for it. */
    crm_close(m);
    CHECK(h.view_rc == CRM_OK);
    pthread_cond_destroy(&h.entered_cond);
    pthread_mutex_destroy(&h.lock);
}

/* ------------------------------------------------------------------------ */

static void remove_db(const char *dir, const char *name) {
    static const char *suffixes[] = {"", "-wal", "-shm", "-journal"};
    char path[PATH_MAX_LEN];
    size_t j;
    for (j = 0; j < sizeof suffixes / sizeof suffixes[0]; j++) {
        snprintf(path, sizeof path, "%s/%s%s", dir, name, suffixes[j]);
        unlink(path);
    }
}

static void remove_dir(const char *dir, int threads) {
    char name[64];
    int i;
    remove_db(dir, "crm.db");
    remove_db(dir, "system.db");
    remove_db(dir, "never.db");
    remove_db(dir, "closing.db");
    for (i = 0; i < threads; i++) {
        snprintf(name, sizeof name, "thread%d.db", i);
        remove_db(dir, name);
    }
    if (rmdir(dir) != 0) {
        fprintf(stderr, "note: could not remove %s\n", dir);
    }
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 8;
    int iterations = argc > 2 ? atoi(argv[2]) : 20;
    const char *tmp = getenv("TMPDIR");
    char dir[DIR_MAX];
    recorder rec;
    int i;

    if (threads < 1) {
        threads = 1;
    }
    if (iterations < 1) {
        iterations = 1;
    }
    i = snprintf(dir, sizeof dir, "%s/crm-c-test-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (i < 0 || (size_t)i >= sizeof dir || mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        printf("0 passed, 1 failed\n");
        return 1;
    }
    memset(&rec, 0, sizeof rec);
    pthread_mutex_init(&rec.lock, NULL);

    printf("crm_module %s (%u), %d threads x %d iterations\n", crm_version(),
           (unsigned)crm_version_number(), threads, iterations);
    test_version();
    test_open_errors(dir);
    test_system_clock(dir);
    test_host_flow(dir, &rec);
    test_threads(dir, &rec, threads, iterations);
    test_close_during_callback(dir);
    crm_close(NULL); /* no-op */

    for (i = 0; i < rec.n_keys; i++) {
        free(rec.keys[i]);
    }
    free(rec.keys);
    pthread_mutex_destroy(&rec.lock);
    remove_dir(dir, threads);

    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}
