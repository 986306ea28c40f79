"""The root logger as the platform prepares it before the user's code is imported."""

from __future__ import annotations

import logging
import sys
import time

LOG_FORMAT = "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(request_id)s\t%(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


class RequestIdStamp:
    """Stamps every log record with the id of the call being served.

    It wraps the record factory rather than filtering one handler, so that a handler or
    formatter the user adds can use %(request_id)s too.
    """

    def __init__(self) -> None:
        self.request_id = ""
        self._make_record = logging.getLogRecordFactory()

    def __call__(self, *args: object, **kwargs: object) -> logging.LogRecord:
        record = self._make_record(*args, **kwargs)
        record.request_id = self.request_id
        return record


def install() -> RequestIdStamp:
    """Give the root logger the platform's stdout handler and level; return the stamp."""
    stamp = RequestIdStamp()
    logging.setLogRecordFactory(stamp)
    formatter = logging.Formatter(LOG_FORMAT, DATE_FORMAT)
    formatter.converter = time.gmtime
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    return stamp
