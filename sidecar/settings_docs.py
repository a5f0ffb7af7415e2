"""The table of every settings key: what it does, its variable, its default, and the test that shows it.

One row per key that sidecar/settings.py accepts in `sidecar:`, `logging:`, `opa:` and upstream
sections. tests/sidecar/test_settings_table.py keeps this table, the accepted keys and
docs/sidecar.md in step: a key accepted without a row, a row without a test that exists, or a stale
table in the docs fails the build. `render_markdown()` writes the docs table
(`python -m sidecar.settings_docs` prints it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SettingDoc:
    key: str  # YAML path: `sidecar.fail_mode`, `sidecar.routes[].path`, `<upstream>.api_url`
    default: str
    meaning: str
    proof: str  # `tests/...py::test_name` that fails if the key stops doing what it says; "" for notes
    env: str = ""


_SIDECAR = "tests/sidecar/test_settings.py"
_HTTP = "tests/sidecar/test_app_http.py"
_POL = "tests/sidecar/test_app_policies.py"
_SEED = "tests/sidecar/test_seed_sections.py"
_LOG = "tests/sidecar/test_decision_log.py"
_FALL = "tests/sidecar/test_fallback.py"
_PROV = "tests/sidecar/test_providers.py"
_PSET = "tests/sidecar/test_provider_settings.py"

SETTINGS_DOCS: tuple[SettingDoc, ...] = (
    # --- sidecar: -------------------------------------------------------------------------------
    SettingDoc(
        "sidecar.listen",
        "`127.0.0.1:8080`",
        "`host:port`, `:port` or `port` the sidecar listens on",
        "tests/sidecar/test_exactness.py::test_3l_concurrent_requests_over_two_processes_let_exactly_l_through",
        "HEXARCH_LISTEN",
    ),
    SettingDoc(
        "sidecar.redis_url",
        "`redis://127.0.0.1:6379/0`",
        "counter store; also `rediss://`, `unix://`, `redis+cluster://h1:p1,h2:p2`",
        "tests/sidecar/test_redis_cluster.py::test_two_sidecars_on_the_cluster_let_exactly_l_through",
        "HEXARCH_REDIS_URL",
    ),
    SettingDoc(
        "sidecar.fail_mode",
        "`fail_closed`",
        "`fail_closed` (503 when OPA or Redis fail) or `fail_open` (forwarded, counted locally)",
        f"{_HTTP}::test_fail_open_lets_requests_through",
        "HEXARCH_FAIL_MODE",
    ),
    SettingDoc(
        "sidecar.decision_engine",
        "`opa`",
        "who decides: `opa` (the OPA server) or `wasm` (OPA's Wasm build of the bundle, in-process)",
        "tests/sidecar/test_wasm_engine.py::test_a_sidecar_with_the_wasm_engine_follows_policy_edits",
        "HEXARCH_DECISION_ENGINE",
    ),
    SettingDoc(
        "sidecar.max_body_bytes",
        "4194304",
        "larger request bodies get 413",
        f"{_HTTP}::test_body_too_large_is_413",
        "HEXARCH_MAX_BODY_BYTES",
    ),
    SettingDoc(
        "sidecar.default_upstream",
        "first upstream section",
        "upstream of built-in routes and of routes without `upstream`",
        f"{_POL}::test_openai_and_ollama_builtins",
        "HEXARCH_DEFAULT_UPSTREAM",
    ),
    SettingDoc(
        "sidecar.builtin_routes",
        "`true`",
        "serve the OpenAI/Ollama endpoints (false: only `routes`)",
        f"{_SEED}::test_builtin_routes_false_leaves_only_the_configured_routes",
        "HEXARCH_BUILTIN_ROUTES",
    ),
    SettingDoc(
        "sidecar.api_keys",
        "none",
        "list of `{id, sha256 | key_env, team, roles, tier}` (below)",
        f"{_POL}::test_missing_or_wrong_key_is_401",
    ),
    SettingDoc(
        "sidecar.anonymous",
        "disabled",
        "`{enabled, id, team, roles, tier}`: the principal of callers without a key",
        f"{_HTTP}::test_placeholder_key_is_ignored_when_no_keys_are_configured",
    ),
    SettingDoc(
        "sidecar.trusted_headers",
        "disabled",
        "`{enabled, user, team, roles, tier, resource_owner}`: header names set by the app next door",
        f"{_HTTP}::test_trusted_headers_principal",
        "HEXARCH_TRUSTED_HEADERS",
    ),
    SettingDoc(
        "sidecar.routes",
        "none",
        "generic routes (below)",
        f"{_HTTP}::test_generic_json_route_with_placeholders",
    ),
    SettingDoc(
        "sidecar.policy_file",
        "this file when it has `policies`",
        "the policy compiled for `/bundles/hexarch.tar.gz`",
        f"{_HTTP}::test_bundle_etag_and_304",
        "HEXARCH_POLICY_FILE",
    ),
    SettingDoc(
        "sidecar.serve_bundle",
        "`true` when there is a policy file",
        "serve the bundle for OPA to poll",
        f"{_HTTP}::test_bundle_follows_edits_and_keeps_last_good_on_a_broken_one",
        "HEXARCH_SERVE_BUNDLE",
    ),
    SettingDoc(
        "sidecar.log_decisions",
        "`true`",
        "write the decision log (also switched off by `logging.enabled: false`)",
        f"{_LOG}::test_decision_logging_can_be_switched_off",
        "HEXARCH_LOG_DECISIONS",
    ),
    # --- sidecar.anonymous / trusted_headers / api_keys[] / routes[] ----------------------------
    SettingDoc(
        "sidecar.anonymous.enabled",
        "`true` when the section is given",
        "let callers without a key in as this principal",
        f"{_HTTP}::test_placeholder_key_is_ignored_when_no_keys_are_configured",
        "HEXARCH_ANONYMOUS",
    ),
    SettingDoc(
        "sidecar.anonymous.id",
        "`anonymous`",
        "its principal id",
        f"{_SEED}::test_anonymous_principal_fields_reach_the_policy",
        "HEXARCH_ANONYMOUS_ID",
    ),
    SettingDoc(
        "sidecar.anonymous.team",
        "none",
        "its team",
        f"{_SEED}::test_anonymous_principal_fields_reach_the_policy",
    ),
    SettingDoc(
        "sidecar.anonymous.roles",
        "none",
        "its roles",
        f"{_SEED}::test_anonymous_principal_fields_reach_the_policy",
    ),
    SettingDoc(
        "sidecar.anonymous.tier",
        "none",
        "its tier",
        f"{_SEED}::test_anonymous_principal_fields_reach_the_policy",
    ),
    SettingDoc(
        "sidecar.trusted_headers.enabled",
        "`true` when the section is given",
        "read the principal from the headers below",
        f"{_HTTP}::test_trusted_headers_principal",
    ),
    SettingDoc(
        "sidecar.trusted_headers.user",
        "`X-Hexarch-User`",
        "principal id header",
        f"{_SEED}::test_trusted_header_fields_reach_the_policy",
    ),
    SettingDoc(
        "sidecar.trusted_headers.team",
        "`X-Hexarch-Team`",
        "team header",
        f"{_SEED}::test_trusted_header_fields_reach_the_policy",
    ),
    SettingDoc(
        "sidecar.trusted_headers.roles",
        "`X-Hexarch-Roles`",
        "comma-separated roles header",
        f"{_SEED}::test_trusted_header_fields_reach_the_policy",
    ),
    SettingDoc(
        "sidecar.trusted_headers.tier",
        "`X-Hexarch-Tier`",
        "tier header",
        f"{_SEED}::test_trusted_header_fields_reach_the_policy",
    ),
    SettingDoc(
        "sidecar.trusted_headers.resource_owner",
        "`X-Hexarch-Resource-Owner`",
        "header naming the owner of the resource the request acts on (`input.resource_owner`)",
        f"{_SEED}::test_resource_owner_from_the_trusted_header_and_the_route",
    ),
    SettingDoc(
        "sidecar.api_keys[].id",
        "required",
        "the user the key stands for",
        f"{_POL}::test_x_api_key_header_works",
    ),
    SettingDoc(
        "sidecar.api_keys[].sha256",
        "one of sha256/key_env",
        "hex digest of the key (`printf %s KEY | sha256sum`)",
        f"{_POL}::test_missing_or_wrong_key_is_401",
    ),
    SettingDoc(
        "sidecar.api_keys[].key_env",
        "one of sha256/key_env",
        "variable holding the key, read at start-up",
        "tests/sidecar/test_secrets.py::test_secrets_never_leak",
    ),
    SettingDoc("sidecar.api_keys[].team", "none", "the key's team", f"{_POL}::test_stats_only_for_admins"),
    SettingDoc("sidecar.api_keys[].roles", "none", "the key's roles", f"{_POL}::test_stats_only_for_admins"),
    SettingDoc(
        "sidecar.api_keys[].tier",
        "none",
        "the key's tier",
        f"{_SEED}::test_api_key_tier_and_team_reach_the_policy",
    ),
    SettingDoc("sidecar.api_keys[].description", "none", "a note for people; never read", ""),
    SettingDoc(
        "sidecar.routes[].path",
        "required",
        "aiohttp pattern; `{owner}` fills `resource_owner`",
        f"{_HTTP}::test_generic_json_route_with_placeholders",
    ),
    SettingDoc(
        "sidecar.routes[].methods",
        "POST (GET for `none`)",
        "HTTP methods",
        f"{_POL}::test_delete_needs_confirmation",
    ),
    SettingDoc(
        "sidecar.routes[].resource",
        "none",
        "first entries of `input.resources`",
        f"{_POL}::test_stats_only_for_admins",
    ),
    SettingDoc(
        "sidecar.routes[].operation", "from the api", "`input.operation`", f"{_POL}::test_batch_only_off_peak"
    ),
    SettingDoc("sidecar.routes[].feature", "none", "`input.feature`", f"{_POL}::test_feature_flags"),
    SettingDoc(
        "sidecar.routes[].resource_type",
        "none",
        "`input.resource_type`",
        f"{_POL}::test_delete_needs_confirmation",
    ),
    SettingDoc(
        "sidecar.routes[].upstream",
        "`default_upstream`",
        "where the route forwards",
        f"{_HTTP}::test_fallback_upstream_answers_and_circuit_opens",
    ),
    SettingDoc(
        "sidecar.routes[].upstream_path",
        "the request path",
        "path upstream (plain `{name}` placeholders)",
        f"{_HTTP}::test_generic_json_route_with_placeholders",
    ),
    SettingDoc(
        "sidecar.routes[].api",
        "`json` (`none` for GET)",
        "body adapter",
        f"{_HTTP}::test_generic_json_route_with_placeholders",
    ),
    SettingDoc(
        "sidecar.routes[].model",
        "body's, else upstream's",
        "`input.model` when the body names none",
        f"{_SEED}::test_route_model_names_the_model_of_bodyless_routes",
    ),
    SettingDoc(
        "sidecar.routes[].guard",
        "`true`",
        "false: no key, no decision, no counters",
        f"{_POL}::test_health_route_needs_no_key",
    ),
    SettingDoc("sidecar.routes[].description", "none", "a note for people; never read", ""),
    # --- logging: -------------------------------------------------------------------------------
    SettingDoc(
        "logging.enabled",
        "`true`",
        "`false`: no decision log at all",
        f"{_LOG}::test_decision_logging_can_be_switched_off",
    ),
    SettingDoc(
        "logging.level",
        "`info`",
        "level of the sidecar's own log (stderr); `--log-level` overrides",
        f"{_LOG}::test_logging_level_sets_the_process_log_level",
    ),
    SettingDoc(
        "logging.file",
        "stdout",
        "decision log file (JSON lines, appended, reopened on SIGHUP); relative to this file",
        f"{_LOG}::test_one_json_line_per_decision_in_the_file",
    ),
    SettingDoc(
        "logging.format",
        "`json`",
        "`json` lines or `text` (`key=value ...`)",
        f"{_LOG}::test_text_format_and_prompts_only_when_asked",
    ),
    SettingDoc(
        "logging.log_prompts",
        "`false`",
        "`true` adds the prompt text to each line",
        f"{_LOG}::test_text_format_and_prompts_only_when_asked",
    ),
    # --- opa: -----------------------------------------------------------------------------------
    SettingDoc(
        "opa.url",
        "`http://127.0.0.1:8181`",
        "where decisions come from",
        f"{_HTTP}::test_fail_closed_is_503",
        "HEXARCH_OPA_URL",
    ),
    SettingDoc(
        "opa.timeout_ms",
        "250",
        "decision timeout in milliseconds",
        "tests/sidecar/test_opa_client.py::test_timeout_is_an_error_and_a_later_call_is_answered",
        "HEXARCH_OPA_TIMEOUT_MS",
    ),
    SettingDoc(
        "opa.timeout_seconds",
        "0.25",
        "the same timeout in seconds (the seed spelling; give one)",
        f"{_SEED}::test_opa_timeout_seconds_is_the_decision_timeout",
    ),
    SettingDoc(
        "opa.decision_path",
        "`hexarch/decision`",
        "the decision document queried",
        f"{_SEED}::test_opa_decision_path_is_the_document_queried",
        "HEXARCH_OPA_DECISION_PATH",
    ),
    SettingDoc(
        "opa.health_check_interval",
        "0 (every probe)",
        "seconds a healthy OPA is trusted by `/readyz` before it is asked again",
        f"{_SEED}::test_health_check_interval_caches_a_healthy_opa",
    ),
    SettingDoc(
        "opa.bundle_polling_seconds",
        "1-2 s under `hexarch up`",
        "how often OPA polls the bundle under `hexarch up` (other launchers read "
        "`Settings.opa_bundle_polling_seconds`)",
        f"{_SEED}::test_bundle_polling_seconds_sets_the_opa_polling_of_up",
    ),
    # --- upstream sections ----------------------------------------------------------------------
    SettingDoc(
        "<upstream>.base_url",
        "one of base_url/api_url",
        "server root; a trailing /v1 is tolerated",
        f"{_POL}::test_openai_and_ollama_builtins",
        "HEXARCH_UPSTREAM_URL",
    ),
    SettingDoc(
        "<upstream>.api_url",
        "one of base_url/api_url",
        "seed spelling of `base_url`: the URL clients know",
        f"{_SEED}::test_seed_upstream_prefers_internal_url_and_fills_defaults",
    ),
    SettingDoc(
        "<upstream>.internal_url",
        "none",
        "when set, where the sidecar forwards (instead of api_url/base_url)",
        f"{_SEED}::test_seed_upstream_prefers_internal_url_and_fills_defaults",
    ),
    SettingDoc(
        "<upstream>.api",
        "`openai`",
        "wire API: `openai`, `ollama`, `gemini`, `anthropic`, `yandexgpt`, `gigachat` (docs/providers.md)",
        "tests/sidecar/test_providers.py::test_openai_client_gets_text_usage_and_finish_from_each_provider",
        "HEXARCH_UPSTREAM_API",
    ),
    SettingDoc(
        "<upstream>.model",
        "none",
        "model of requests that name none (written into the body)",
        f"{_SEED}::test_route_model_names_the_model_of_bodyless_routes",
    ),
    SettingDoc(
        "<upstream>.default_model",
        "none",
        "seed spelling of `model`",
        f"{_SEED}::test_seed_upstream_prefers_internal_url_and_fills_defaults",
    ),
    SettingDoc(
        "<upstream>.default_temperature",
        "none",
        "temperature of requests that set none",
        f"{_SEED}::test_seed_upstream_prefers_internal_url_and_fills_defaults",
    ),
    SettingDoc(
        "<upstream>.default_max_tokens",
        "none",
        "output maximum of requests that name none",
        f"{_SEED}::test_seed_upstream_prefers_internal_url_and_fills_defaults",
    ),
    SettingDoc(
        "<upstream>.timeout_seconds",
        "30",
        "whole reply (non-streamed) / between chunks (streamed)",
        f"{_HTTP}::test_upstream_timeout_is_504",
    ),
    SettingDoc(
        "<upstream>.connect_timeout_seconds",
        "5",
        "TCP connect timeout",
        f"{_SEED}::test_connect_timeout_seconds_bounds_the_connect",
    ),
    SettingDoc(
        "<upstream>.api_key_env",
        "none",
        "variable holding the provider's key, sent in the provider's own header",
        "tests/sidecar/test_secrets.py::test_secrets_never_leak",
    ),
    SettingDoc(
        "<upstream>.retries",
        "0",
        "extra attempts on connection errors, timeouts, 5xx",
        f"{_SEED}::test_retry_attempts_and_delay",
    ),
    SettingDoc(
        "<upstream>.retry_attempts",
        "0",
        "seed spelling of `retries`",
        f"{_SEED}::test_retry_attempts_and_delay",
    ),
    SettingDoc(
        "<upstream>.backoff_seconds",
        "0.05",
        "first backoff, doubling per retry (at most 1 s, or the delay itself when longer), "
        "plus up to 50 % jitter",
        f"{_FALL}::test_a_5xx_primary_is_retried_then_the_fallback_answers",
    ),
    SettingDoc(
        "<upstream>.retry_delay_seconds",
        "0.05",
        "seed spelling of `backoff_seconds`",
        f"{_SEED}::test_retry_attempts_and_delay",
    ),
    SettingDoc(
        "<upstream>.deadline_seconds",
        "60",
        "the whole chain (retries, backoff, fallbacks) before the first byte",
        f"{_FALL}::test_all_timing_out_is_a_504_bounded_by_the_deadline",
    ),
    SettingDoc(
        "<upstream>.models",
        "none",
        "globs of the request models this upstream serves (routing by model, `/v1/models`)",
        f"{_PROV}::test_models_lists_what_the_upstreams_serve",
    ),
    SettingDoc(
        "<upstream>.api_key_file",
        "none",
        "a file holding the provider's key (read at start-up)",
        f"{_PSET}::test_provider_keys_are_read",
    ),
    SettingDoc(
        "<upstream>.folder_id",
        "none",
        "yandexgpt: the folder of `modelUri` (`gpt://<folder_id>/<model>`) and `x-folder-id`",
        f"{_PROV}::test_openai_client_gets_text_usage_and_finish_from_each_provider",
    ),
    SettingDoc(
        "<upstream>.key_type",
        "`api_key`",
        "yandexgpt: `api_key` (`Api-Key`) or `iam_token` (`Bearer`)",
        f"{_PSET}::test_yandex_key_type_picks_the_authorization_scheme",
    ),
    SettingDoc(
        "<upstream>.auth_url",
        "none",
        "gigachat: the OAuth token endpoint",
        f"{_PROV}::test_gigachat_token_is_cached_and_fetched_again_before_it_expires",
    ),
    SettingDoc(
        "<upstream>.scope",
        "none",
        "gigachat: the OAuth scope",
        f"{_PROV}::test_gigachat_token_is_cached_and_fetched_again_before_it_expires",
    ),
    SettingDoc(
        "<upstream>.ca_file",
        "system CAs",
        "PEM bundle the provider's certificate is checked against (token exchange included)",
        "tests/sidecar/test_provider_tls.py::test_ca_file_and_verify_tls",
    ),
    SettingDoc(
        "<upstream>.verify_tls",
        "`true`",
        "`false`: the provider's certificate is not checked",
        "tests/sidecar/test_provider_tls.py::test_ca_file_and_verify_tls",
    ),
    SettingDoc(
        "<upstream>.fallback",
        "none",
        "other upstream sections tried next",
        f"{_HTTP}::test_fallback_upstream_answers_and_circuit_opens",
    ),
    SettingDoc(
        "<upstream>.supports_stream_usage",
        "`true`",
        "ask OpenAI-style streams for usage",
        "tests/sidecar/test_streaming.py::test_sse_usage_event_reaches_a_client_that_asked",
    ),
    SettingDoc(
        "<upstream>.breaker_failures",
        "5",
        "failed attempts in a row that open the circuit (0: never)",
        f"{_HTTP}::test_fallback_upstream_answers_and_circuit_opens",
    ),
    SettingDoc(
        "<upstream>.breaker_seconds",
        "10",
        "how long an open circuit skips the upstream",
        f"{_HTTP}::test_fallback_upstream_answers_and_circuit_opens",
    ),
    SettingDoc(
        "<upstream>.max_tokens_param",
        "by host",
        "`max_tokens` or `max_completion_tokens` for an added cap",
        "tests/sidecar/test_output_allowance.py::test_the_cap_is_written_in_the_field_each_upstream_reads",
    ),
    SettingDoc("<upstream>.description", "none", "a note for people; never read", ""),
)

# `sidecar.hardening.*`: the rows come from sidecar/hardening.py's own table (one source of truth);
# each key names the test that shows it at work.
_HARD = "tests/sidecar/test_hardening.py"
_HARDENING_PROOFS = {
    "max_json_depth": f"{_HARD}::test_deep_or_huge_json_is_400_before_admission",
    "max_json_keys": f"{_HARD}::test_deep_or_huge_json_is_400_before_admission",
    "header_read_timeout_seconds": f"{_HARD}::test_slowloris_is_cut_and_other_clients_are_answered",
    "max_connections": f"{_HARD}::test_connection_flood_evicts_waiting_connections_not_clients",
    "keepalive_timeout_seconds": f"{_HARD}::test_idle_keepalive_connections_are_closed",
    "max_inflight_requests": f"{_HARD}::test_requests_in_flight_are_bounded",
    "max_principal_id_bytes": f"{_HARD}::test_long_trusted_principal_id_is_refused",
    "max_subjects_per_window": f"{_HARD}::test_distinct_subjects_per_window_are_bounded",
    "breaker_failures": "tests/sidecar/test_outages.py::test_outage_is_cut_by_the_breaker_and_recovers",
    "breaker_seconds": "tests/sidecar/test_outages.py::test_outage_is_cut_by_the_breaker_and_recovers",
    "admin_listen": f"{_HARD}::test_admin_listener_serves_metrics_and_the_main_one_does_not",
    "admin_key_env": f"{_HARD}::test_metrics_and_bundle_need_the_admin_key",
}


def _hardening_rows() -> tuple[SettingDoc, ...]:
    from sidecar.hardening import HARDENING, HardeningSettings

    defaults = HardeningSettings()
    rows = [
        SettingDoc(
            "sidecar.hardening",
            "defaults below",
            "bounds, the OPA/Redis circuit breakers and the operator endpoints (docs/hardening.md)",
            _HARDENING_PROOFS["max_json_depth"],
        )
    ]
    for knob in HARDENING:
        value = getattr(defaults, knob.key)
        rows.append(
            SettingDoc(
                f"sidecar.hardening.{knob.key}",
                f"`{value}`" if value != "" else "none",
                knob.doc,
                _HARDENING_PROOFS[knob.key],
                knob.env,
            )
        )
    return tuple(rows)


SETTINGS_DOCS = SETTINGS_DOCS + _hardening_rows()


def render_markdown() -> str:
    """The settings table of docs/sidecar.md."""
    lines = ["| key | default | variable | meaning |", "|---|---|---|---|"]
    for row in SETTINGS_DOCS:
        env = f"`{row.env}`" if row.env else ""
        meaning = row.meaning.replace("|", "\\|")
        lines.append(f"| `{row.key}` | {row.default.replace('|', '/')} | {env} | {meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
