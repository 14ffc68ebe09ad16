// header_cpp.cpp -- the generated header compiles as C++ (extern "C", no
// C-only constructs) and declares every function with the expected type.
// Checked, not linked, with:
//   c++ -std=c++11 -Wall -Wextra -Werror -pedantic -fsyntax-only -Iinclude tests/c/header_cpp.cpp
#include "crm_module.h"

#include <cstdint>

namespace {

// Converting each function to a pointer of exactly this type checks its signature.
template <typename F>
void has_type(F) {}

int deliver(void *, const char *, const char *) { return CRM_EFFECT_ACCEPTED; }
void log_line(void *, int, const char *) {}

}  // namespace

extern "C" int crm_header_cpp_check(const char *path);

extern "C" int crm_header_cpp_check(const char *path) {
    has_type<crm_status (*)(const char *, const char *, crm_module **)>(&crm_open);
    has_type<void (*)(crm_module *)>(&crm_close);
    has_type<crm_status (*)(crm_module *, const char *, char **)>(&crm_push_event);
    has_type<crm_status (*)(crm_module *, const char *, char **)>(&crm_push_events);
    has_type<crm_status (*)(crm_module *, const char *, char **)>(&crm_execute);
    has_type<crm_status (*)(crm_module *, const char *, char **)>(&crm_tracking_hit);
    has_type<crm_status (*)(crm_module *, const char *, const char *, char **)>(&crm_query_view);
    has_type<crm_status (*)(crm_module *, int64_t)>(&crm_clock_advance);
    has_type<crm_status (*)(crm_module *, int64_t *)>(&crm_clock_now);
    has_type<crm_status (*)(crm_module *, int64_t)>(&crm_wait_idle);
    has_type<crm_status (*)(crm_module *, const crm_host_callbacks *)>(&crm_set_host_callbacks);
    has_type<void (*)(char *)>(&crm_string_free);
    has_type<int (*)(void)>(&crm_last_error_code);
    has_type<const char *(*)(void)>(&crm_last_error_message);
    has_type<const char *(*)(void)>(&crm_version);
    has_type<uint32_t (*)(void)>(&crm_version_number);
    has_type<crm_effect_fn>(&deliver);
    has_type<crm_log_fn>(&log_line);

    static_assert(CRM_OK == 0, "CRM_OK");
    static_assert(CRM_ERR_NULL == 1 && CRM_ERR_INVALID == 2 && CRM_ERR_NOT_FOUND == 3 &&
                      CRM_ERR_CONFLICT == 4 && CRM_ERR_TOO_LARGE == 5 && CRM_ERR_STORAGE == 6 &&
                      CRM_ERR_CLOSED == 7 && CRM_ERR_TIMEOUT == 8 && CRM_ERR_INTERNAL == 9 &&
                      CRM_ERR_UTF8 == 10,
                  "status codes");
    static_assert(CRM_EFFECT_ACCEPTED == 0 && CRM_EFFECT_RETRY == 1 && CRM_EFFECT_FAILED == 2,
                  "effect answers");
    static_assert(CRM_LOG_ERROR == 1 && CRM_LOG_WARN == 2 && CRM_LOG_INFO == 3 && CRM_LOG_DEBUG == 4,
                  "log levels");
    static_assert(CRM_MAX_INPUT_BYTES == 64u * 1024u * 1024u, "input limit");
    static_assert(CRM_VERSION_NUMBER > 0 && CRM_HOST_CALLBACKS_VERSION == 1, "versions");

    // A typical C++ host, calling every function.
    crm_host_callbacks cb = {};
    cb.version = CRM_HOST_CALLBACKS_VERSION;
    cb.user_data = nullptr;
    cb.deliver_message = &deliver;
    cb.write_property = nullptr;
    cb.create_task = nullptr;
    cb.log = &log_line;

    crm_module *m = nullptr;
    char *out = nullptr;
    int64_t now = 0;
    int rc = crm_open(path, "{\"clock\":{\"mode\":\"manual\",\"start\":\"2026-01-05T08:00:00Z\"}}", &m);
    rc |= crm_set_host_callbacks(m, &cb);
    rc |= crm_push_event(m, "{}", &out);
    crm_string_free(out);
    rc |= crm_push_events(m, "[]", nullptr);
    rc |= crm_execute(m, "{\"command\":\"settings.get\"}", &out);
    crm_string_free(out);
    rc |= crm_query_view(m, "automation_list", nullptr, &out);
    crm_string_free(out);
    rc |= crm_clock_advance(m, 1000);
    rc |= crm_clock_now(m, &now);
    rc |= crm_wait_idle(m, 1000);
    if (rc != CRM_OK && crm_last_error_code() != CRM_OK && crm_last_error_message()[0] != '\0') {
        rc = crm_last_error_code();
    }
    crm_close(m);
    return rc + static_cast<int>(crm_version_number()) + (crm_version()[0] == '0') + (now > 0);
}
