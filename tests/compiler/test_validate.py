"""Validation: the formats users already write are accepted; every mistake is a located error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from compiler.errors import PolicyError
from compiler.model import AccessRule, FeatureRule, LimitRule, ModelRule, PolicyFile, TimeRule
from compiler.parse import parse_text
from compiler.validate import validate


def check(text: str, base_dir: Path | None = None) -> PolicyFile:
    return validate(parse_text(textwrap.dedent(text), "p.yaml"), base_dir)


def errors(text: str, base_dir: Path | None = None) -> list[str]:
    with pytest.raises(PolicyError) as info:
        check(text, base_dir)
    return [d.format() for d in info.value.diagnostics]


def test_seed_style_file_with_any_policy_ids() -> None:
    model = check(
        """
        enforcement: warn
        timezone: America/New_York
        logging: {level: info, file: .hexarch/log, log_prompts: false}
        opa: {url: "http://opa:8181"}
        tinyllama:
          base_url: http://localhost:11434
          api: ollama
        my-gateway:
          base_url: https://gw.example.com/v1
        sidecar:
          anything: [the sidecar validates this]
        policies:
          - id: "Team.Limits-1"
            description: quoted ids and values, as in the seed guide
            rules:
              - resource: "tinyllama"
                requests_per_minute: 30
                description: rule-level description
              - resource: tinyllama
                monthly_budget_usd: 100
                alert_at_percentage: 75
                action: warn_at_75%
          - id: "off"
            enabled: false
            rules:
              - requests_per_minute: 1
        """
    )
    assert model.enforcement == "warn" and model.timezone == "America/New_York"
    assert [u.name for u in model.upstreams] == ["tinyllama", "my-gateway"]
    rate, budget = model.policies[0].rules
    assert (
        isinstance(rate, LimitRule)
        and rate.kind == "rate"
        and rate.limits[0].amount == 30
        and rate.description == "rule-level description"
    )
    assert (
        isinstance(budget, LimitRule)
        and budget.kind == "budget"
        and (budget.action, budget.warn_at) == ("block", 0.75)
    )
    assert [p.id for p in model.enabled_policies] == ["Team.Limits-1"]


def test_windows_days_models_and_principals_are_normalised() -> None:
    model = check(
        """
        policies:
          - id: p
            rules:
              - operation: batch
                allowed_hours: ["22:00-06:00", "12:00-12:30"]
                forbidden_hours: "00:00-24:00"
                forbidden_days: [Saturday, sunday]
              - model: "tinyllama*"
                allowed: false
              - allowed_users: ["@admin", alice]
              - feature: beta
                enabled: true
                requires_approval: true
        """
    )
    time_rule, model_rule, access, feature = model.policies[0].rules
    assert isinstance(time_rule, TimeRule)
    assert time_rule.allowed_hours == ((1320, 360), (720, 750))
    assert time_rule.forbidden_hours == ((0, 1440),)
    assert time_rule.forbidden_days == ("saturday", "sunday")
    assert (
        isinstance(model_rule, ModelRule)
        and model_rule.patterns == ("tinyllama*",)
        and not model_rule.allowed
    )
    assert isinstance(access, AccessRule) and (access.users, access.roles) == (("alice",), ("admin",))
    assert isinstance(feature, FeatureRule) and feature.approver_roles == ("admin",)


@pytest.mark.parametrize(
    ("snippet", "fragment"),
    [
        ("requests_per_minute: 30\n    enabled: true", "unknown key 'enabled' in a rate rule"),
        ("requests_per_minute: 30.5", "must be a whole number"),
        ("requests_per_minute: true", "must be a whole number, got the boolean true"),
        ("parameter: temperature\n    max: true", "'max' must be a number"),
        ("parameter: temperature", "sets no bound"),
        ("parameter: temperature\n    allowed_values: []", "'allowed_values' must be a non-empty list"),
        ("monthly_budget_usd: 0.0000001", "below one micro-dollar"),
        ("daily_budget_usd: 1e3", "must be a number, got the string '1e3'"),
        ("daily_budget_usd: 1e3", "write exponents with a dot and a sign, e.g. 1.0e+3"),
        ("operation: batch\n    allowed_hours: 22:00", "malformed time window '22:00'"),
        ('operation: batch\n    allowed_hours: "10:60-11:00"', "minutes run from 00 to 59"),
        ('operation: batch\n    allowed_hours: "22-06"', "malformed time window"),
        ('operation: batch\n    allowed_hours: "00:00-24:30"', "end 24:30 is past 24:00"),
        ("model: []", "non-empty list"),
        ('model: "tiny[llama"', "invalid model pattern"),
        ('allowed_users: ["@"]', "names no role"),
        ("requires: approval\n    operation: delete", "unknown requirement 'approval'"),
        ("requires: confirmation", "needs an 'operation'"),
        ("feature: vision", "needs 'enabled: true' or 'enabled: false'"),
        ("max_tokens_per_hour: 10\n    warn_at_percentage: 100", "between 0 and 100"),
        ("max_tokens_per_hour: 10\n    warn_at_percent: 50", "did you mean 'warn_at_percentage'?"),
        (
            "max_tokens_per_hour: 10\n    alert_at_percentage: 50\n    warn_at_percentage: 60",
            "give the warning threshold once",
        ),
        ("requests_per_minute: 30\n    action: warn_at_0%", "between 1% and 99%"),
        ("requests_per_minute: 30\n    scope: everyone", "unknown scope 'everyone'"),
        # YAML 1.1 numbers that are not plain decimals would silently change a limit.
        ("requests_per_minute: 1:30", "got the string '1:30'"),
        ("requests_per_minute: 1:30", "YAML 1.1 would read '1:30' as 90"),
        ("monthly_budget_usd: 1:30.5", "YAML 1.1 would read '1:30.5' as 90.5"),
        ("requests_per_hour: 0x1F", "YAML 1.1 would read '0x1F' as 31"),
        ("requests_per_day: 010", "YAML 1.1 would read '010' as 8"),
        ('requests_per_minute: "30"', "write the number without quotes"),
        ('parameter: temperature\n    max: "1.0"', "'max' must be a number, got the string '1.0'"),
        ('parameter: temperature\n    max: "1.0"', "write the number without quotes"),
        ("requests_per_minute: 30.0", "write 30 without a decimal point"),
        ("requests_per_minute: 9007199254740992", "is too large: 9007199254740992"),
        ("monthly_budget_usd: 1.0e+10", "'monthly_budget_usd' is too large"),
        ("requests_per_minute: 30\n    action: warn_at_75", "did you mean 'warn_at_75%'?"),
        ("requests_per_minute: 30\n    action: warn at 75%", "did you mean 'warn_at_75%'?"),
        ("requests_per_minute: 30\n    action: Block", "did you mean 'block'?"),
        ("operation: x\n    forbidden_days: [sunday]\n    timezone: UTC", "set once, at the top level"),
        ("operation: x\n    forbidden_days: [funday]", "unknown weekday 'funday'"),
        ("requests_per_minute: 5\n    enabled: false", "'enabled: false' belongs to a policy"),
    ],
)
def test_rule_mistakes(snippet: str, fragment: str) -> None:
    text = "policies:\n- id: p\n  rules:\n  - " + snippet.replace("\n    ", "\n    ") + "\n"
    found = errors(text.replace("\n    ", "\n    "))
    assert any(fragment in line for line in found), found


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("version: 2\npolicies: []\n", "unsupported version"),
        ("policies: {}\n", "'policies' must be a list"),
        ("pricing: {gpt: {input_per_million_usd: 1}}\npolicies: []\n", "needs 'output_per_million_usd'"),
        (
            "pricing: {gpt: {input_per_million_usd: -1, output_per_million_usd: 1}}\npolicies: []\n",
            "must not be negative",
        ),
        ("defaults: {max_output_tokens: 0}\npolicies: []\n", "must be greater than zero"),
        (
            "pricing: {gpt: {input_per_million_usd: 0.0000000001, output_per_million_usd: 1}}\n"
            "policies: []\n",
            "has more than 9 decimal places",
        ),
        ("- just a list\n", "the policy file must be a mapping"),
        ("policies:\n- id: p\n  rule: []\n", "did you mean 'rules'?"),
        ("policies:\n- id: p\n  rules: []\n", "'rules' must be a non-empty list"),
        ("policies:\n- id: 'a b'\n  rules: [{requests_per_minute: 1}]\n", "may only use letters"),
        ("policies:\n- rules: [{requests_per_minute: 1}]\n", "a policy needs an 'id'"),
        (
            "policies:\n- id: off\n  rules: [{requests_per_minute: 1}]\n",
            "got the boolean false (at policies[0].id); put",
        ),
        ("policies:\n- id: p\n  enabled: no-thanks\n  rules: [{requests_per_minute: 1}]\n", "true or false"),
        ("policies: []\nopenai: {api: openai}\n", "unknown top-level key 'openai'"),
        ("timezone: utc\npolicies: []\n", "unknown timezone 'utc' (at timezone); did you mean 'UTC'?"),
        ("enforcement: Strict\npolicies: []\n", "did you mean 'strict'?"),
        (
            "policies:\n- id: p\n  timezone: UTC\n  rules: [{requests_per_minute: 1}]\n",
            "unknown key 'timezone' in a policy (at policies[0].timezone); the timezone is set once",
        ),
        # Tags other than YAML's own are refused where they are written, never a traceback.
        (
            "policies:\n- id: p\n  rules: [{requests_per_minute: !custom 1}]\n",
            "p.yaml:3:33: error: unsupported YAML tag '!custom'",
        ),
        ("policies: !!set {a, b}\n", "p.yaml:1:11: error: unsupported YAML tag '!!set'"),
        ("policies:\n- id: p\n  rules:\n  - <<: 5\n", "'<<' must merge a mapping or a list of mappings"),
    ],
)
def test_file_mistakes(text: str, fragment: str) -> None:
    found = errors(text)
    assert any(fragment in line for line in found), found


def test_rule_of_unknown_keys_only() -> None:
    found = errors("policies:\n- id: p\n  rules:\n  - {colour: blue}\n")
    assert any("unknown key 'colour' in a rule" in line for line in found)
    assert any("4:5: error: rule has no key that gives its kind" in line for line in found)


def test_disabled_policies_are_still_validated() -> None:
    found = errors("policies:\n- id: p\n  enabled: false\n  rules: [{requests_per_minut: 1}]\n")
    assert found == [
        "p.yaml:4:12: error: unknown key 'requests_per_minut' in a rule"
        " (at policies[0].rules[0].requests_per_minut); did you mean 'requests_per_minute'?"
    ]


def test_same_threshold_twice_is_fine() -> None:
    model = check(
        "policies:\n- id: b\n  rules:\n"
        "  - {monthly_budget_usd: 5, alert_at_percentage: 80, action: warn_at_80%}\n"
    )
    rule = model.policies[0].rules[0]
    assert isinstance(rule, LimitRule) and rule.kind == "budget" and rule.warn_at == 0.8


def test_custom_policy_files(tmp_path: Path) -> None:
    (tmp_path / "ok.rego").write_text("package hexarch.custom.ok\n\nviolations := []\n")
    (tmp_path / "wrong.rego").write_text("package something.else\n")
    text = """
    custom:
      - {id: ok, file: ok.rego}
      - {id: wrong, file: wrong.rego}
      - {id: gone, file: gone.rego}
      - {id: Bad-Id, file: ok.rego}
      - {id: ok, file: ok.rego}
    policies: []
    """
    found = errors(text, tmp_path)
    assert any(
        "4:23: error: 'wrong.rego' must declare 'package hexarch.custom.wrong'" in line for line in found
    )
    assert any(
        "5:22: error: cannot read custom policy file 'gone.rego': No such file" in line for line in found
    )
    assert any("must be a Rego name" in line for line in found)
    assert any("duplicate custom policy id 'ok'" in line for line in found)
    model = check("custom: [{id: ok, file: ok.rego}]\npolicies: []\n", tmp_path)
    assert model.custom[0].source.startswith("package hexarch.custom.ok")


def test_anchors_and_merge_keys_work_as_in_yaml() -> None:
    model = check(
        """
        policies:
          - id: p
            rules:
              - &base
                resource: tinyllama
                requests_per_minute: 5
                scope: principal
              - <<: *base
                requests_per_minute: 7
              - <<: [*base]
                requests_per_hour: 50
        """
    )
    first, second, third = model.policies[0].rules
    assert isinstance(first, LimitRule) and first.kind == "rate" and [s.amount for s in first.limits] == [5]
    # Keys written beside '<<' win over the merged ones; the rest is merged.
    assert (
        isinstance(second, LimitRule) and second.kind == "rate" and [s.amount for s in second.limits] == [7]
    )
    assert second.scope == "principal" and second.resource == "tinyllama"
    assert (
        isinstance(third, LimitRule)
        and third.kind == "rate"
        and [s.suffix for s in third.limits] == ["rpm", "rph"]
    )


def test_a_merged_typo_is_reported_where_it_is_written() -> None:
    found = errors(
        """
        x-rule-defaults: &base {resource: x, requests_per_minut: 5}
        policies:
          - id: p
            rules:
              - <<: *base
                requests_per_hour: 50
        """
    )
    assert found == [
        "p.yaml:2:38: error: unknown key 'requests_per_minut' in a rate rule"
        " (at policies[0].rules[0].requests_per_minut); did you mean 'requests_per_minute'?"
    ]


def test_abbreviated_weekdays() -> None:
    model = check("policies:\n- id: p\n  rules: [{operation: x, forbidden_days: [Sat, sun]}]\n")
    rule = model.policies[0].rules[0]
    assert isinstance(rule, TimeRule) and rule.forbidden_days == ("saturday", "sunday")
