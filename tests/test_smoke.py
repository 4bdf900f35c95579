import json

import trio
from websockets.sync.client import connect

from conftest import in_process_server


def test_boot_lands_in_database(appliance):
    with connect(f"{appliance.url}/CP1", subprotocols=["ocpp1.6"]) as ws:
        ws.send(
            json.dumps(
                [2, "1", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]
            )
        )
        answer = json.loads(ws.recv())
    assert answer[0] == 3 and answer[2]["status"] == "Accepted"
    rows = appliance.wait_rows("select direction, action from messages order by seq", count=2)
    assert rows == [("in", "BootNotification"), ("out", "BootNotification")]
    assert appliance.stop() == 0


async def test_server_call_in_process(tmp_path):
    async with in_process_server(tmp_path) as running:

        def charge_point():
            with connect(f"{running.url}/CP2", subprotocols=["ocpp2.0.1"]) as ws:
                ws.send(json.dumps([2, "1", "Heartbeat", {}]))
                ws.recv()
                call = json.loads(ws.recv())
                ws.send(json.dumps([3, call[1], {"status": "Accepted"}]))
                return call

        async with trio.open_nursery() as nursery:
            result = {}

            async def run_cp():
                result["call"] = await trio.to_thread.run_sync(charge_point)

            nursery.start_soon(run_cp)
            while "CP2" not in running.stations:
                await trio.sleep(0.01)
            answer = await running.stations["CP2"].call("Reset", {"type": "Immediate"})
        assert answer == {"status": "Accepted"}
        assert result["call"][2] == "Reset"
