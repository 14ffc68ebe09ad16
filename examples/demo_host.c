/*
 * demo_host.c — the main job: a C host EHR driving the CRM module.
 *
 * It opens a database, creates "New lead welcome series" and "Dormant Patient
 * Win-back", pushes a simulated practice through 120 simulated days (30 before
 * the automations go live, then 90; existing
 * patients, new leads from the website and the front desk, appointments, form
 * submissions, email opens and clicks, SMS replies including STOP, delivery
 * receipts), then prints the Automation list and each automation's
 * Performance view as the host UI would render them.
 *
 * The practice is simulated with fixed-seed PRNGs (one for the practice, one
 * for the providers answering in the callbacks), so every run prints the
 * same figures. Recipient behaviour is driven by what the module actually
 * sends: the host's deliver_message callback decides, per message, whether it
 * will be delivered, opened, clicked or answered, and pushes those events back
 * later, like a real email/SMS provider would.
 *
 * Build and run: bash examples/run-demo.sh   (see README.md)
 * Usage: demo_host DB_PATH [CONTACTS] [DAYS]
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crm_module.h"

#define DAY_MS (24LL * 3600 * 1000)

/* ---- deterministic randomness ------------------------------------------ */
/* Two fixed-seed streams: the practice's (the main thread) and the
 * providers' (the host callbacks, on the module's dispatcher thread, drawn
 * only under queue_lock). Neither thread touches the other's state. */
typedef struct {
    uint64_t state;
} rng;
static rng practice_rng = {0x9E3779B97F4A7C15ULL};
static rng provider_rng = {0xD1B54A32D192ED03ULL};
static double rnd_from(rng *r) {
    r->state ^= r->state >> 12;
    r->state ^= r->state << 25;
    r->state ^= r->state >> 27;
    return (double)((r->state * 0x2545F4914F6CDD1DULL) >> 11) / 9007199254740992.0;
}
static int chance_from(rng *r, double p) { return rnd_from(r) < p; }
static int between_from(rng *r, int lo, int hi) { return lo + (int)(rnd_from(r) * (hi - lo + 1)); }
/* The practice's stream, for the main thread. */
static int chance(double p) { return chance_from(&practice_rng, p); }
static int between(int lo, int hi) { return between_from(&practice_rng, lo, hi); }

/* ---- the practice --------------------------------------------------------- */
enum { LEAD = 0, PATIENT = 1 };
typedef struct {
    int status;
    int exists;
    int booked_day; /* day of the pending booked appointment, -1 none */
    int nudged;     /* got an SMS or clicked: more likely to book */
} person;

static person *people;
static int n_people;
static int max_people;
static int today;
static int next_event_id;
static int next_appt_id;

/* Inbound events decided by the "providers" in the callbacks, pushed on their day. */
typedef struct {
    int day;
    char *json;
} pending;
static pending *queue;
static size_t queue_len, queue_cap;
static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;

static long delivered_messages, delivered_tasks, delivered_properties;
static char *sample_email, *sample_sms, *sample_stop;

/* Adds an event to the queue; the caller holds queue_lock. */
static void enqueue_locked(int day, const char *fmt, va_list ap) {
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    if (queue_len == queue_cap) {
        queue_cap = queue_cap ? queue_cap * 2 : 1024;
        queue = realloc(queue, queue_cap * sizeof *queue);
        if (queue == NULL) {
            fprintf(stderr, "demo_host: out of memory for the providers' queue\n");
            exit(1);
        }
    }
    queue[queue_len].day = day;
    queue[queue_len].json = strdup(buf);
    queue_len++;
}

/* Adds an event to the queue, taking queue_lock. */
static void enqueue(int day, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&queue_lock);
    enqueue_locked(day, fmt, ap);
    pthread_mutex_unlock(&queue_lock);
    va_end(ap);
}

/* enqueue() for a caller that holds queue_lock (the callbacks). */
static void answer(int day, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    enqueue_locked(day, fmt, ap);
    va_end(ap);
}

static int person_index(const char *contact_id) {
    int i = (contact_id && contact_id[0] == 'p') ? atoi(contact_id + 1) : -1;
    return i >= 0 && i < max_people ? i : -1;
}

/* ---- host callbacks (run on the module's dispatcher thread) --------------
 * They share the queue, the people's booking state, `today` and the
 * counters with the main thread: all of it is read and written under
 * queue_lock, and they draw from the providers' own random stream. */
static int on_message(void *user, const char *key, const char *payload) {
    (void)user;
    json_error_t err;
    json_t *msg = json_loads(payload, 0, &err);
    if (!msg) return CRM_EFFECT_FAILED;
    const char *channel = json_string_value(json_object_get(msg, "channel"));
    const char *contact = json_string_value(json_object_get(msg, "contact_id"));
    const char *automation = json_string_value(json_object_get(msg, "automation_id"));
    int idx = person_index(contact);
    int winback = automation && strcmp(automation, "winback") == 0;
    pthread_mutex_lock(&queue_lock);
    delivered_messages++;
    if (channel && strcmp(channel, "email") == 0 && !sample_email) {
        /* The full payload carries the HTML and the RFC 5322 message; show the essentials. */
        json_t *r = json_object_get(msg, "rendered");
        json_t *brief = json_pack("{s:O?, s:O?, s:O?, s:O?, s:O?, s:O?, s:O?}", "key", json_object_get(msg, "key"), "to",
                                  json_object_get(msg, "to"), "category", json_object_get(msg, "category"), "message_id",
                                  json_object_get(r, "message_id"), "subject", json_object_get(r, "subject"), "text",
                                  json_object_get(r, "text"), "unsubscribe_url", json_object_get(r, "unsubscribe_url"));
        sample_email = json_dumps(brief, JSON_INDENT(2));
        json_decref(brief);
    }
    if (channel && strcmp(channel, "sms") == 0 && !sample_sms) sample_sms = json_dumps(msg, JSON_INDENT(2));
    const char *purpose = json_string_value(json_object_get(msg, "purpose"));
    if (purpose && strcmp(purpose, "stop_confirmation") == 0 && !sample_stop) sample_stop = json_dumps(msg, JSON_INDENT(2));

    /* A message retried after a soft bounce comes again under the same key
       (its payload's "attempt" counts): what each attempt sets off is an
       event of its own, with an id of its own (the module refuses an id
       used again for a different event). */
    json_int_t attempt = json_integer_value(json_object_get(msg, "attempt"));
    if (attempt < 1) attempt = 1;
    double r = rnd_from(&provider_rng);
    if (r < 0.015) {
        answer(today + 1, "{\"event_id\":\"r-%s-%d\",\"type\":\"delivery.receipt\",\"message_key\":\"%s\",\"status\":\"failed\"}", key,
                (int)attempt, key);
    } else if (r < 0.04) {
        answer(today + 1, "{\"event_id\":\"r-%s-%d\",\"type\":\"delivery.receipt\",\"message_key\":\"%s\",\"status\":\"bounced\",\"bounce\":\"%s\"}",
                key, (int)attempt, key, chance_from(&provider_rng, 0.6) ? "hard" : "soft");
    } else {
        answer(today, "{\"event_id\":\"r-%s-%d\",\"type\":\"delivery.receipt\",\"message_key\":\"%s\",\"status\":\"delivered\"}", key,
                (int)attempt, key);
        if (channel && strcmp(channel, "email") == 0) {
            if (chance_from(&provider_rng, 0.46)) {
                int d = today + between_from(&provider_rng, 0, 2);
                answer(d, "{\"event_id\":\"o-%s-%d\",\"type\":\"email.opened\",\"message_key\":\"%s\"}", key, (int)attempt, key);
                if (chance_from(&provider_rng, 0.28)) {
                    answer(d, "{\"event_id\":\"k-%s-%d\",\"type\":\"email.clicked\",\"message_key\":\"%s\"}", key, (int)attempt, key);
                    if (idx >= 0) people[idx].nudged = 1;
                }
                if (chance_from(&provider_rng, 0.03)) answer(d + 1, "{\"event_id\":\"e-%s-%d\",\"type\":\"email.replied\",\"message_key\":\"%s\"}", key, (int)attempt, key);
            }
            if (winback && idx >= 0 && chance_from(&provider_rng, 0.22) && people[idx].booked_day < 0) people[idx].booked_day = today + between_from(&provider_rng, 1, 14);
        } else if (channel && idx >= 0) {
            if (chance_from(&provider_rng, 0.12)) {
                const char *body = chance_from(&provider_rng, 0.2) ? "STOP" : (chance_from(&provider_rng, 0.5) ? "yes please" : "can you book me Tuesday?");
                answer(today + between_from(&provider_rng, 0, 1), "{\"event_id\":\"s-%s-%d\",\"type\":\"sms.received\",\"contact_id\":\"%s\",\"body\":\"%s\",\"in_reply_to\":\"%s\"}",
                        key, (int)attempt, contact, body, key);
            }
            people[idx].nudged = 1;
        }
    }
    pthread_mutex_unlock(&queue_lock);
    json_decref(msg);
    return CRM_EFFECT_ACCEPTED;
}

static int on_task(void *user, const char *key, const char *payload) {
    (void)user; (void)key; (void)payload;
    pthread_mutex_lock(&queue_lock);
    delivered_tasks++;
    pthread_mutex_unlock(&queue_lock);
    return CRM_EFFECT_ACCEPTED;
}

static int on_property(void *user, const char *key, const char *payload) {
    (void)user; (void)key; (void)payload;
    pthread_mutex_lock(&queue_lock);
    delivered_properties++;
    pthread_mutex_unlock(&queue_lock);
    return CRM_EFFECT_ACCEPTED;
}

static void on_log(void *user, int level, const char *message) {
    (void)user;
    if (level <= CRM_LOG_WARN) fprintf(stderr, "[crm] %s\n", message);
}

/* ---- calling the module --------------------------------------------------- */
static crm_module *crm;

static void check(crm_status st, const char *what) {
    if (st != CRM_OK) {
        fprintf(stderr, "%s failed: %d %s\n", what, st, crm_last_error_message());
        exit(1);
    }
}

static json_t *execute(const char *command) {
    char *out = NULL;
    check(crm_execute(crm, command, &out), "crm_execute");
    json_t *j = json_loads(out, 0, NULL);
    crm_string_free(out);
    return j;
}

static json_t *view(const char *name, const char *params) {
    char *out = NULL;
    check(crm_query_view(crm, name, params, &out), "crm_query_view");
    json_t *j = json_loads(out, 0, NULL);
    crm_string_free(out);
    return j;
}

/* Events pushed in batches of up to 1,000, atomically each. */
static char *batch;
static size_t batch_len, batch_cap;
static int batch_count;

static void flush(void) {
    if (!batch_count) return;
    batch[batch_len++] = ']';
    batch[batch_len] = 0;
    char *out = NULL;
    check(crm_push_events(crm, batch, &out), "crm_push_events");
    crm_string_free(out);
    batch_len = 0;
    batch_count = 0;
}

static void push(const char *fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (batch_len + (size_t)n + 4 > batch_cap) {
        batch_cap = (batch_cap + (size_t)n + 4) * 2;
        batch = realloc(batch, batch_cap);
    }
    batch[batch_len++] = batch_count ? ',' : '[';
    memcpy(batch + batch_len, buf, (size_t)n);
    batch_len += (size_t)n;
    if (++batch_count == 1000) flush();
}

static const char *FIRST[] = {"Ava", "Liam", "Maya", "Noah", "Zoe", "Ethan", "Iris", "Omar", "Lena", "Jude", "Ruth", "Ivan"};
static const char *LAST[] = {"Garcia", "Nguyen", "Okafor", "Smith", "Kowalski", "Haddad", "Rossi", "Tanaka", "Brown", "Moreau"};
static const char *SOURCES[] = {"website_form", "website_form", "website_form", "walk_in", "manual_entry", "import"};

/* The simulation starts on Monday 6 Oct 2025, 12:00 UTC (crm_open's clock). */
#define START_EPOCH 1759752000LL

/* An RFC 3339 time `days` before the simulation starts, mid-afternoon. */
static void before_start(int days, char out[32]) {
    time_t t = (time_t)(START_EPOCH - (long long)days * 86400 + 3 * 3600);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void new_contact(int status) {
    if (n_people == max_people) return;
    int i = n_people++;
    pthread_mutex_lock(&queue_lock);
    people[i].exists = 1;
    people[i].status = status;
    people[i].booked_day = -1;
    pthread_mutex_unlock(&queue_lock);
    const char *source = status == PATIENT ? "import" : SOURCES[between(0, 5)];
    const char *sub = chance(0.93) ? "subscribed" : "unknown";
    /* An imported patient's last visit, as the EHR has it: within the year
       for most, up to three years back for the rest. A new lead has none. */
    char last_visit[64] = "";
    if (status == PATIENT) {
        char at[32];
        before_start(chance(0.6) ? between(1, 365) : between(366, 1095), at);
        snprintf(last_visit, sizeof last_visit, ",\"last_activity_at\":\"%s\"", at);
    }
    push("{\"event_id\":\"h%d\",\"type\":\"contact.upserted\"%s,\"contact\":{\"id\":\"p%05d\",\"first_name\":\"%s\",\"last_name\":\"%s\","
         "\"email\":\"p%05d@mail.example\",\"phone\":\"+1617555%04d\",\"dob\":\"%d-%02d-%02d\",\"status\":\"%s\",\"lead_source\":\"%s\","
         "\"email_subscription\":\"%s\",\"sms_subscription\":\"%s\",\"owner\":{\"id\":\"u%d\",\"name\":\"%s\"},\"tags\":[\"%s\"]}}",
         next_event_id++, last_visit, i, FIRST[between(0, 11)], LAST[between(0, 9)], i, i % 10000, between(1940, 2008), between(1, 12), between(1, 28),
         status == PATIENT ? "patient" : "lead", source, sub, sub, between(1, 3), between(0, 1) ? "Sarah Chen" : "Marcus Hill",
         chance(0.3) ? "allergy" : "general");
    if (status == LEAD && chance(0.35))
        push("{\"event_id\":\"h%d\",\"type\":\"form.submitted\",\"submission\":{\"id\":\"f%d\",\"form_id\":\"intake\",\"form_name\":\"New patient intake\","
             "\"contact_id\":\"p%05d\",\"answers\":{\"reason\":\"checkup\"}}}", next_event_id++, i, i);
}

static void book(int i) {
    int appt = next_appt_id++;
    push("{\"event_id\":\"h%d\",\"type\":\"appointment.booked\",\"appointment\":{\"id\":\"ap%d\",\"contact_id\":\"p%05d\",\"provider_id\":\"dr%d\",\"clinic_id\":\"main\"}}",
         next_event_id++, appt, i, between(1, 4));
    pthread_mutex_lock(&queue_lock);
    people[i].status = PATIENT;
    people[i].booked_day = -1;
    pthread_mutex_unlock(&queue_lock);
    if (chance(0.9))
        enqueue(today + between(2, 10), "{\"event_id\":\"c-ap%d\",\"type\":\"appointment.completed\",\"appointment\":{\"id\":\"ap%d\",\"contact_id\":\"p%05d\"}}", appt, appt, i);
    else
        enqueue(today + between(2, 10), "{\"event_id\":\"n-ap%d\",\"type\":\"appointment.no_show\",\"appointment\":{\"id\":\"ap%d\",\"contact_id\":\"p%05d\"}}", appt, appt, i);
}

static void push_due(void) {
    pthread_mutex_lock(&queue_lock);
    size_t keep = 0;
    for (size_t k = 0; k < queue_len; k++) {
        if (queue[k].day <= today) {
            push("%s", queue[k].json);
            free(queue[k].json);
        } else {
            queue[keep++] = queue[k];
        }
    }
    queue_len = keep;
    pthread_mutex_unlock(&queue_lock);
}

static void next_day(void) {
    flush();
    check(crm_clock_advance(crm, DAY_MS), "crm_clock_advance");
    check(crm_wait_idle(crm, 120000), "crm_wait_idle");
    pthread_mutex_lock(&queue_lock);
    today++;
    pthread_mutex_unlock(&queue_lock);
}

/* ---- rendering the views -------------------------------------------------- */
static const char *s(json_t *o, const char *k) {
    const char *v = json_string_value(json_object_get(o, k));
    return v ? v : "";
}

static void print_cards(json_t *cards) {
    size_t i;
    json_t *c;
    json_array_foreach(cards, i, c) printf("  %-24s %s\n", s(c, "label"), s(c, "display"));
}

static void print_list(void) {
    json_t *v = view("automation_list", NULL);
    printf("\n== %s ==\n", s(v, "title"));
    print_cards(json_object_get(v, "stat_cards"));
    printf("\n  %-30s %-9s %9s %-22s %-10s %-22s\n", "Name", "Status", "Enrolled", "Goal", "Entered By", "Last Updated");
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(v, "rows"), i, r) {
        printf("  %-30s %-9s %9s %-22s %-10s %-22s\n", s(r, "name"), s(json_object_get(r, "status"), "label"), s(r, "enrolled_display"),
               s(json_object_get(r, "goal"), "label"), s(r, "entered_by"), s(json_object_get(r, "last_updated"), "display"));
    }
    json_t *f;
    json_array_foreach(json_object_get(v, "footer"), i, f) if (json_object_get(f, "text")) printf("  %s\n", s(f, "text"));
    json_decref(v);
}

static void print_performance(const char *id) {
    char params[128];
    snprintf(params, sizeof params, "{\"automation_id\":\"%s\"}", id);
    json_t *v = view("automation_performance", params);
    json_t *h = json_object_get(v, "header");
    printf("\n== Performance: %s ==\n", s(h, "title"));
    print_cards(json_object_get(v, "stat_cards"));
    json_t *steps = json_object_get(v, "steps");
    printf("\n  %-36s %9s %10s %7s %10s %11s\n", "Step", "Executed", "Completed", "Failed", "Avg. time", "Conversion");
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(steps, "rows"), i, r) {
        char title[64];
        snprintf(title, sizeof title, "%*s%s", (int)(2 * json_integer_value(json_object_get(r, "depth"))), "", s(r, "title"));
        printf("  %-36s %9s %10s %7s %10s %11s\n", title, s(r, "executed_display"), s(r, "completed_display"), s(r, "failed_display"),
               s(r, "avg_time_display"), s(r, "conversion_display"));
    }
    printf("\n  Channel   Sent  Delivered  Opened  Clicked  Replied  Bounced  Failed  Suppressed  Delivery\n");
    json_array_foreach(json_object_get(v, "channel_breakdown"), i, r) {
        printf("  %-7s %6lld %10lld %7lld %8lld %8lld %8lld %7lld %11lld  %s\n", s(json_object_get(r, "channel"), "label"),
               json_integer_value(json_object_get(r, "sent")), json_integer_value(json_object_get(r, "delivered")),
               json_integer_value(json_object_get(r, "opened")), json_integer_value(json_object_get(r, "clicked")),
               json_integer_value(json_object_get(r, "replied")), json_integer_value(json_object_get(r, "bounced")),
               json_integer_value(json_object_get(r, "failed")), json_integer_value(json_object_get(r, "suppressed")),
               s(r, "delivery_rate_display"));
    }
    json_t *flow = json_object_get(v, "time_in_flow");
    printf("\n  %s: %s (median %s) over %lld ended enrollments; %lld still active\n", s(flow, "label"), s(flow, "mean_display"),
           s(flow, "median_display"), json_integer_value(json_object_get(flow, "ended")), json_integer_value(json_object_get(flow, "active")));
    json_t *supp = json_object_get(v, "suppressions");
    if (json_array_size(json_object_get(supp, "reasons"))) {
        printf("  Not sent (suppressed):");
        json_array_foreach(json_object_get(supp, "reasons"), i, r) printf("  %s %s", s(json_object_get(r, "reason"), "label"), s(r, "count_display"));
        printf("\n");
    }
    json_t *exits = json_object_get(v, "exits");
    json_t *reasons = json_object_get(exits, "reasons");
    if (json_array_size(reasons)) {
        printf("\n  Exits:");
        json_array_foreach(reasons, i, r) printf("  %s %s", s(json_object_get(r, "reason"), "label"), s(r, "count_display"));
        printf("\n");
    }
    json_t *detail = json_object_get(v, "detailed_analytics");
    printf("\n  %s (%s)\n", s(detail, "title"), s(detail, "scope"));
    json_array_foreach(json_object_get(detail, "cards"), i, r) printf("  %-24s %-8s %s\n", s(r, "label"), s(r, "display"), s(r, "hint"));
    /* The latest engagement, by contact id (the view also names the contact). */
    json_t *timeline = json_object_get(v, "engagement_timeline");
    printf("\n  %s, latest 5:\n", s(timeline, "title"));
    json_array_foreach(json_object_get(timeline, "entries"), i, r) {
        if (i == 5) break;
        json_t *step = json_object_get(r, "step");
        printf("  %-22s %-13s %-12s %s\n", s(r, "at_display"), s(json_object_get(r, "kind"), "label"), s(r, "contact_id"),
               json_is_string(step) ? json_string_value(step) : "");
    }
    json_decref(v);
}

/* ---- the main job ---------------------------------------------------------- */
static const char *WELCOME =
    "{\"command\":\"automation.create\",\"automation_id\":\"welcome\",\"entered_by\":\"Dr. Lee\",\"definition\":{"
    "\"name\":\"New lead welcome series\",\"goal\":\"book_appointment\",\"notes\":\"Every new lead, whatever the source.\","
    "\"trigger\":{\"type\":\"contact_created\"},"
    "\"steps\":["
    "{\"id\":\"welcome\",\"name\":\"Welcome email\",\"type\":\"send_email\",\"subject\":\"Welcome to {{practice}}\","
    "\"preheader\":\"How to book your first visit\",\"body\":\"<p>Hi {{firstname}}, thanks for reaching out to {{practice}}.</p>\"},"
    "{\"id\":\"wait2d\",\"type\":\"delay\",\"amount\":2,\"unit\":\"days\"},"
    "{\"id\":\"followup\",\"name\":\"Follow-up SMS\",\"type\":\"send_sms\",\"message\":\"Hi {{firstname}}, it's {{practice}}. Reply to book a visit.\"},"
    "{\"id\":\"booked\",\"name\":\"Booked yet?\",\"type\":\"branch\",\"condition\":{\"type\":\"property\",\"property\":\"status\",\"op\":\"equals\",\"value\":\"patient\"},"
    "\"yes\":[{\"id\":\"tag_new\",\"name\":\"Tag as new patient\",\"type\":\"set_property\",\"property\":\"tags\",\"value\":{\"add\":[\"new-patient\"]}}],"
    "\"no\":[{\"id\":\"call\",\"name\":\"Call this lead\",\"type\":\"create_task\",\"title\":\"Call this lead back\","
    "\"assignee\":{\"kind\":\"contact_owner\"},\"due_in_minutes\":5}]}"
    "]}}";

static const char *WINBACK =
    "{\"command\":\"automation.create\",\"automation_id\":\"winback\",\"entered_by\":\"Front desk\",\"definition\":{"
    "\"name\":\"Dormant Patient Win-back\",\"goal\":\"patient_reactivation\",\"unenrollment\":{\"goal_met\":true,\"sms_opt_out\":true},"
    "\"trigger\":{\"type\":\"inactive_for_days\",\"days\":90},"
    "\"steps\":["
    "{\"id\":\"miss\",\"name\":\"We miss you email\",\"type\":\"send_email\",\"subject\":\"It has been a while, {{firstname}}\","
    "\"body\":\"<p>{{practice}} would love to see you again.</p>\"},"
    "{\"id\":\"wait7\",\"type\":\"delay\",\"amount\":7,\"unit\":\"days\"},"
    "{\"id\":\"book_sms\",\"name\":\"Booking nudge SMS\",\"type\":\"send_sms\",\"message\":\"{{firstname}}, book your next visit with {{practice}}: reply YES.\"},"
    "{\"id\":\"wait7b\",\"type\":\"delay\",\"amount\":7,\"unit\":\"days\"},"
    "{\"id\":\"desk\",\"name\":\"Front desk call\",\"type\":\"create_task\",\"title\":\"Call dormant patient\","
    "\"assignee\":{\"kind\":\"queue\",\"name\":\"front_desk\"},\"due_in_minutes\":60}"
    "]}}";

/* A whole number from min to max given on the command line as `name`; any
 * other text ends the program with status 2 and says why. */
static int count_arg(const char *text, const char *name, long min, long max) {
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "demo_host: %s must be a whole number from %ld to %ld, got \"%s\"\n",
                name, min, max, text);
        exit(2);
    }
    return (int)v;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: %s DB_PATH [CONTACTS] [DAYS]\n", argv[0]);
        return 2;
    }
    int contacts = argc > 2 ? count_arg(argv[2], "CONTACTS", 10, 1000000) : 2200;
    int days = argc > 3 ? count_arg(argv[3], "DAYS", 1, 3650) : 90;
    int existing = contacts * 7 / 10;
    max_people = contacts;
    people = calloc((size_t)max_people, sizeof *people);
    if (people == NULL) {
        fprintf(stderr, "demo_host: out of memory for %d contacts\n", contacts);
        return 1;
    }

    /* The demo simulates a practice from its first day: on a database it
       already filled, it would push its whole history again. */
    FILE *existing_db = fopen(argv[1], "rb");
    if (existing_db != NULL) {
        fclose(existing_db);
        fprintf(stderr, "demo_host: %s already exists: the demo simulates a practice from its first day, "
                        "so give it the path of a new database\n", argv[1]);
        free(people);
        return 2;
    }

    printf("CRM module %s — demo host\n", crm_version());
    /* Monday 6 Oct 2025, 08:00 in New York. */
    check(crm_open(argv[1],
                   "{\"clock\":{\"mode\":\"manual\",\"start\":\"2025-10-06T12:00:00Z\"},"
                   "\"initial_settings\":{\"practice_name\":\"Riverside Family Practice\",\"time_zone\":\"America/New_York\","
                   "\"practice_phone\":\"+16175550100\","
                   "\"email_sender\":{\"from_name\":\"Riverside Family Practice\",\"from_address\":\"hello@riverside.example\"},"
                   "\"email_footer\":{\"postal_address\":\"12 River Road, Boston, MA 02118\","
                   "\"text\":\"You receive this email because you are a patient of {{practice}}. Unsubscribe: {{unsubscribe_link}}\"},"
                   "\"sms\":{\"sender_number\":\"+16175550100\"},"
                   "\"tracking\":{\"base_url\":\"https://t.riverside.example\",\"email_opens\":true,\"email_clicks\":true,\"sms_clicks\":true}}}",
                   &crm),
          "crm_open");
    crm_host_callbacks cb = {CRM_HOST_CALLBACKS_VERSION, NULL, on_message, on_property, on_task, on_log};
    check(crm_set_host_callbacks(crm, &cb), "crm_set_host_callbacks");

    /* The practice before go-live: existing patients, some of them active. */
    for (int i = 0; i < existing; i++) new_contact(PATIENT);
    for (int d = 0; d < 30; d++) {
        for (int i = 0; i < existing; i++)
            if (chance(0.004)) book(i);
        push_due();
        next_day();
    }

    json_decref(execute(WELCOME));
    json_decref(execute(WINBACK));
    json_decref(execute("{\"command\":\"automation.activate\",\"automation_id\":\"welcome\"}"));
    json_decref(execute("{\"command\":\"automation.activate\",\"automation_id\":\"winback\"}"));
    printf("Go-live on day %d with %d existing patients; simulating %d days...\n", today, existing, days);

    int leads_per_day = (contacts - existing) / (days > 0 ? days : 1);
    for (int d = 0; d < days; d++) {
        int arrivals = leads_per_day + (chance(0.5) ? 1 : 0);
        for (int k = 0; k < arrivals; k++) new_contact(LEAD);
        for (int i = 0; i < n_people; i++) {
            /* The callbacks may be setting this person's booking state. */
            pthread_mutex_lock(&queue_lock);
            person p = people[i];
            pthread_mutex_unlock(&queue_lock);
            if (p.booked_day >= 0 && p.booked_day <= today) book(i);
            else if (p.status == LEAD && chance(p.nudged ? 0.03 : 0.008)) book(i);
            else if (p.status == PATIENT && i < existing && chance(0.0015)) book(i);
        }
        push_due();
        next_day();
        if ((d + 1) % 30 == 0) printf("  day %d: %d contacts\n", d + 1, n_people);
    }
    /* The providers' answers to the last day's messages (receipts, opens). */
    push_due();
    flush();
    check(crm_wait_idle(crm, 120000), "crm_wait_idle");

    printf("\nHost received %ld messages, %ld tasks, %ld property write-backs.\n", delivered_messages, delivered_tasks, delivered_properties);
    if (sample_email) printf("\nAn email as the host receives it (rendered; the payload also carries the HTML and the RFC 5322 message):\n%s\n", sample_email);
    if (sample_sms) printf("\nA message as the host receives it (SMS):\n%s\n", sample_sms);
    if (sample_stop) printf("\nAn opt-out: a patient replied STOP; the one confirmation the module sends:\n%s\n", sample_stop);

    print_list();
    print_performance("welcome");
    print_performance("winback");

    crm_close(crm);
    free(sample_email);
    free(sample_sms);
    free(sample_stop);
    for (size_t k = 0; k < queue_len; k++) free(queue[k].json);
    free(queue);
    free(batch);
    free(people);
    return 0;
}
