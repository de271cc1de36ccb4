"""Regression: the sweep store's ``sweep.json`` was created empty (open with "x") and then
filled, so a second rank arriving in between read an empty file and failed with a
JSONDecodeError (seen on a 16-core machine in the 2-rank sweep test)."""

from __future__ import annotations

import json
import threading

from lossdoctor.training import sweep


def test_concurrent_openers_always_read_a_complete_store_file(tmp_path, monkeypatch):
    settings = {"batch_sizes": [8, 16]}
    errors: list[BaseException] = []
    real_dumps = json.dumps

    def slow_dumps(*args, **kwargs):  # widen the window in which the old code showed an empty file
        threading.Event().wait(0.05)
        return real_dumps(*args, **kwargs)

    def slow_dump(obj, handle, **kwargs):
        handle.write(slow_dumps(obj, **kwargs))

    monkeypatch.setattr(sweep.json, "dumps", slow_dumps)
    monkeypatch.setattr(sweep.json, "dump", slow_dump)

    def opener(store):
        try:
            sweep._open_store(store, settings, "abc")
        except BaseException as err:  # noqa: BLE001 - collected and re-raised below
            errors.append(err)

    for i in range(5):
        store = tmp_path / f"store{i}"
        threads = [threading.Thread(target=opener, args=(store,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert json.loads((store / "sweep.json").read_text())["fingerprint"] == "abc"
        assert sorted(p.name for p in store.iterdir()) == [
            "runs",
            "sweep.json",
        ]  # no temporary left
    assert not errors, errors
