"""A strict JSON reader for the tests: RFC 8259 has no NaN, Infinity or -Infinity (Python's json reads them)."""
import json


def loads(text):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON (RFC 8259)")
    return json.loads(text, parse_constant=refuse)
