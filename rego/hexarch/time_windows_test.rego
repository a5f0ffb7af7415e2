# METADATA
# title: Tests of time windows
# description: >-
#   opa test cases. Each sets the data and input it needs with `with`, so they also pass inside a
#   compiled bundle next to real data and custom policies.
package hexarch.lib.time_windows_test

import data.hexarch.lib.fixtures
import data.hexarch.lib.time_windows

_rule(fields) := object.union(
	{
		"policy": "time_based", "rule": 0, "operation": "batch", "resource": "*",
		"allowed_hours": [], "forbidden_hours": [], "allowed_days": [], "forbidden_days": [],
		"action": "block",
	},
	fields,
)

# Messages of the time_windows.findings for one rule, at weekday `day` (0 = Monday), hh:mm, in `tz`.
_at(rule, tz, day, hour, minute) := messages if {
	now := fixtures.at(day, hour, minute)
	messages := [f.message | some f in time_windows.findings] with data.hexarch.config as {"timezone": tz, "time_windows": [rule]}
		with input as {"operation": "batch"}
		with time.now_ns as now
}

test_allowed_hours_wrapping_midnight if {
	r := _rule({"allowed_hours": [[1320, 360]]})
	_at(r, "UTC", 0, 22, 0) == []
	_at(r, "UTC", 0, 23, 59) == []
	_at(r, "UTC", 1, 0, 0) == []
	_at(r, "UTC", 1, 5, 59) == []
	_at(r, "UTC", 1, 6, 0) == ["operation batch is only allowed during 22:00-06:00 UTC (now tuesday 06:00)"]
	_at(r, "UTC", 1, 21, 59) == ["operation batch is only allowed during 22:00-06:00 UTC (now tuesday 21:59)"]
}

test_allowed_hours_plain_window_is_half_open if {
	r := _rule({"allowed_hours": [[540, 1020], [1200, 1260]]})
	_at(r, "UTC", 2, 9, 0) == []
	_at(r, "UTC", 2, 16, 59) == []
	_at(r, "UTC", 2, 20, 30) == []
	_at(r, "UTC", 2, 17, 0) == ["operation batch is only allowed during 09:00-17:00, 20:00-21:00 UTC (now wednesday 17:00)"]
	_at(r, "UTC", 2, 8, 59) != []
}

test_forbidden_hours if {
	r := _rule({"forbidden_hours": [[1320, 360]]})
	_at(r, "UTC", 3, 12, 0) == []
	_at(r, "UTC", 3, 6, 0) == []
	_at(r, "UTC", 3, 22, 0) == ["operation batch is not allowed during 22:00-06:00 UTC (now thursday 22:00)"]
	_at(r, "UTC", 3, 3, 30) != []
}

test_days if {
	weekdays := _rule({"allowed_days": ["monday", "tuesday", "wednesday", "thursday", "friday"]})
	_at(weekdays, "UTC", 4, 12, 0) == []
	_at(weekdays, "UTC", 5, 12, 0) == ["operation batch is only allowed on monday, tuesday, wednesday, thursday, friday UTC (now saturday 12:00)"]
	weekend := _rule({"forbidden_days": ["saturday", "sunday"], "operation": "*"})
	_at(weekend, "UTC", 6, 12, 0) == ["requests are not allowed on sunday (UTC)"]
	_at(weekend, "UTC", 0, 12, 0) == []
}

test_timezone_shifts_the_clock if {
	r := _rule({"allowed_hours": [[540, 1020]]})

	# 08:30 UTC is 09:30 in Berlin (winter time) and 17:30 in Tokyo.
	_at(r, "Europe/Berlin", 0, 8, 30) == []
	_at(r, "Asia/Tokyo", 0, 8, 30) == ["operation batch is only allowed during 09:00-17:00 Asia/Tokyo (now monday 17:30)"]

	# 23:30 UTC Sunday is already Monday in Berlin.
	d := _rule({"forbidden_days": ["monday"]})
	_at(d, "Europe/Berlin", 6, 23, 30) == ["operation batch is not allowed on monday (Europe/Berlin)"]
	_at(d, "UTC", 6, 23, 30) == []
}

test_unreadable_timezone_fails_closed if {
	_at(_rule({"forbidden_hours": [[0, 60]]}), "Mars/Olympus", 0, 12, 0) == ["operation batch is restricted by time, and the time in \"Mars/Olympus\" cannot be read"]
	_at(_rule({"forbidden_days": ["sunday"]}), "Mars/Olympus", 0, 12, 0) != []
	_at(_rule({"allowed_hours": [[0, 1440]]}), "Mars/Olympus", 0, 12, 0) == ["operation batch is only allowed during 00:00-24:00 Mars/Olympus (now unknown)"]
	_at(_rule({"allowed_days": ["monday"]}), "Mars/Olympus", 0, 12, 0) != []
}

test_other_operations_are_not_restricted if {
	r := _rule({"allowed_hours": [[1320, 360]]})
	now := fixtures.at(0, 12, 0)
	fs := time_windows.findings with data.hexarch.config as {"time_windows": [r]}
		with input as {"operation": "chat"}
		with time.now_ns as now
	fs == set()
}

test_missing_operation_applies_every_window if {
	r := _rule({"allowed_hours": [[1320, 360]]})
	now := fixtures.at(0, 12, 0)
	fs := time_windows.findings with data.hexarch.config as {"time_windows": [r]}
		with input as {}
		with time.now_ns as now
	[[f.code, f.status] | some f in fs] == [["time_restricted", 403]]
}

test_malformed_window_fails_allowed_hours_closed if {
	_at(_rule({"allowed_hours": [[1, 2, 3]]}), "UTC", 0, 0, 1) == ["operation batch is only allowed during [1, 2, 3] UTC (now monday 00:01)"]
	_at(_rule({"allowed_hours": [[60.5, 120]]}), "UTC", 0, 0, 1) == ["operation batch is only allowed during 60.5-02:00 UTC (now monday 00:01)"]
}
