# METADATA
# title: Time windows
# description: >-
#   allowed_hours / forbidden_hours (half-open [start, end) in minutes after midnight, wrapping
#   midnight when start > end) and allowed_days / forbidden_days, read in the configured timezone
#   from time.now_ns(). Each list of a rule is checked on its own; a clock that cannot be read
#   (bad timezone) fails every restricted rule closed.
package hexarch.lib.time_windows

import data.hexarch.lib.applies
import data.hexarch.lib.compiled

# METADATA
# title: Minute of the day
# description: Minutes after midnight now, in the configured timezone.
now_minute := (clock[0] * 60) + clock[1] if {
	clock := time.clock([time.now_ns(), compiled.timezone])
}

# METADATA
# title: Day of the week
# description: Lower-case English weekday now, in the configured timezone.
today := lower(time.weekday([time.now_ns(), compiled.timezone]))

# METADATA
# title: Inside window
# description: True when now is inside the half-open window [start, end), which wraps when start > end.
in_window([start, end]) if {
	start <= end
	start <= now_minute
	now_minute < end
}

in_window([start, end]) if {
	start > end
	now_minute >= start
}

in_window([start, end]) if {
	start > end
	now_minute < end
}

_active := [rule |
	some rule in data.hexarch.config.time_windows
	applies.operations[object.get(rule, "operation", "*")]
	applies.resources[object.get(rule, "resource", "*")]
	object.get(rule, "action", "block") != "allow"
]

_list(rule, name) := [item | some item in rule[name]]

_finding(rule, message) := applies.finding(rule, "time_restricted", 403, message)

_inside_any(windows) if {
	some window in windows
	in_window(window)
}

# METADATA
# title: Time findings
# description: Findings with code time_restricted (403).
findings := set() if {
	# No applying rule (the common case): skip every check body.
	count(_active) == 0
} else := _findings

_findings contains _finding(rule, message) if {
	some rule in _active
	windows := _list(rule, "allowed_hours")
	count(windows) > 0
	not _inside_any(windows)
	message := sprintf("%v only allowed during %v %v (now %v)", [
		_subject(rule), _show_windows(windows),
		compiled.timezone, _now_text,
	])
}

_findings contains _finding(rule, message) if {
	some rule in _active
	some window in _list(rule, "forbidden_hours")
	in_window(window)
	message := sprintf("%v not allowed during %v %v (now %v)", [
		_subject(rule), _show_window(window),
		compiled.timezone, _now_text,
	])
}

_findings contains _finding(rule, message) if {
	some rule in _active
	days := _list(rule, "allowed_days")
	count(days) > 0
	not _today_in(days)
	message := sprintf("%v only allowed on %v %v (now %v)", [
		_subject(rule), applies.join(days),
		compiled.timezone, _now_text,
	])
}

_findings contains _finding(rule, message) if {
	some rule in _active
	today in _list(rule, "forbidden_days")
	message := sprintf("%v not allowed on %v (%v)", [_subject(rule), today, compiled.timezone])
}

_findings contains _finding(rule, message) if {
	some rule in _active
	_forbids_something(rule)
	not _clock_known
	message := sprintf("%v restricted by time, and the time in %q cannot be read", [
		_subject(rule),
		compiled.timezone,
	])
}

# A helper, not "not today in days" inline: with an unreadable clock that expression is not true.
_today_in(days) if {
	_clock_known
	today in days
}

_forbids_something(rule) if count(_list(rule, "forbidden_hours")) > 0

_forbids_something(rule) if count(_list(rule, "forbidden_days")) > 0

_clock_known if {
	now_minute >= 0
	is_string(today)
}

_subject(rule) := sprintf("%v are", [applies.operation_label(rule)]) if {
	object.get(rule, "operation", "*") == "*"
} else := sprintf("%v is", [applies.operation_label(rule)])

_now_text := sprintf("%v %v", [today, _show_minute(now_minute)]) if {
	_clock_known
} else := "unknown"

_show_windows(windows) := concat(", ", [_show_window(window) | some window in windows])

_show_window(window) := sprintf("%v-%v", [_show_minute(window[0]), _show_minute(window[1])]) if {
	count(window) == 2
} else := sprintf("%v", [window])

# Messages must always be defined (an undefined message would drop its finding), hence the else.
_show_minute(minute) := sprintf("%02d:%02d", [floor(minute / 60), minute % 60]) if {
	is_number(minute)
	minute == floor(minute)
} else := sprintf("%v", [minute])
