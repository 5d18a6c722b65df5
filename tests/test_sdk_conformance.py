"""The virtual robot as the official SDKs see it: ROBOTIS `dynamixel-sdk` and Feetech `feetech-servo-sdk`
drive `reverie sim serve-bus` over its pseudo-terminal, as they would drive a real arm's adapter.

Expected answers follow the protocol manuals (Dynamixel Protocol 2.0 e-manual: status packets and
error numbers; Feetech STS: alarm-only status byte). The SDKs are test-only dependencies (the
`dev` extra); a missing one skips its half of this file.
"""

from __future__ import annotations

import time

import pytest

from reverie.robot_io.virtual.launcher import VirtualArm

IDS = [1, 2, 3, 4, 5, 6]
# The SDKs wait 2 x LATENCY_TIMER + 2 ms for a reply (34 ms). This 2-core test machine may be busy,
# so give the server longer; nothing below depends on the value except how long a silence takes.
LATENCY_MS = 100


def _sdk(module: str, package: str):
    return pytest.importorskip(module, reason=f"{package} is not installed: pip install -e '.[dev]'",
                               exc_type=ImportError)


def _open(sdk, port_module, link, monkeypatch):
    monkeypatch.setattr(port_module, "LATENCY_TIMER", LATENCY_MS)
    port = sdk.PortHandler(link)
    assert port.openPort() and port.setBaudRate(1_000_000)
    return port


def _served(tmp_path_factory, protocol: str):
    """A virtual arm speaking `protocol` on a pseudo-terminal for the module's tests; yields its link."""
    with VirtualArm(protocol, link=tmp_path_factory.mktemp(protocol) / "arm", camera_fps=0) as arm:
        yield arm.link


def _client(module: str, package: str, link, monkeypatch, protocol_version: float):
    """(sdk, open port, packet handler): one SDK client on the served link, closed by the caller."""
    sdk = _sdk(module, package)
    port = _open(sdk, sdk.port_handler, link, monkeypatch)
    return sdk, port, sdk.PacketHandler(protocol_version)


def _raw(port, packet: bytes) -> None:
    """Bytes on the wire that the SDK would never send (bad checksums, truncated headers)."""
    port.ser.reset_input_buffer()
    port.ser.write(packet)
    port.ser.flush()


def _first_success(attempt, within_s: float = 2.0) -> float:
    """Seconds until `attempt()` first succeeds (a busy machine may need a retry, never seconds)."""
    start = time.monotonic()
    while not attempt():
        assert time.monotonic() - start < within_s, "the bus stayed deaf"
    return time.monotonic() - start


# ---- Dynamixel Protocol 2.0 ---------------------------------------------------------------------

DXL_MODELS = {1: 1060, 2: 1060, 3: 1200, 4: 1200, 5: 1200, 6: 1200}  # Koch: 2x XL430-W250, 4x XL330-M288


@pytest.fixture(scope="module")
def dxl_server(tmp_path_factory):
    _sdk("dynamixel_sdk", "dynamixel-sdk")
    yield from _served(tmp_path_factory, "dynamixel")


@pytest.fixture
def dxl(dxl_server, monkeypatch):
    sdk, port, handler = _client("dynamixel_sdk", "dynamixel-sdk", dxl_server, monkeypatch, 2.0)
    yield sdk, port, handler
    port.closePort()


def test_dxl_ping_and_eeprom_agree_with_the_bus(dxl):
    sdk, port, ph = dxl
    for i, number in DXL_MODELS.items():
        assert ph.ping(port, i) == (number, sdk.COMM_SUCCESS, 0)
    assert ph.ping(port, 9)[1] == sdk.COMM_RX_TIMEOUT
    found, result = ph.broadcastPing(port)
    assert result == sdk.COMM_SUCCESS and {i: v[0] for i, v in found.items()} == DXL_MODELS
    # The bus runs at 1 Mbaud: Baud_Rate reads 3 (1,000,000), not the factory 1 (57,600).
    assert ph.read1ByteTxRx(port, 2, 8) == (3, sdk.COMM_SUCCESS, 0)
    assert ph.read1ByteTxRx(port, 2, 9) == (250, sdk.COMM_SUCCESS, 0)  # Return_Delay_Time, factory


def test_dxl_read_write_and_the_manuals_error_numbers(dxl):
    sdk, port, ph = dxl
    ok = (sdk.COMM_SUCCESS, 0)
    assert ph.write1ByteTxRx(port, 3, 65, 1) == ok  # LED
    assert ph.read1ByteTxRx(port, 3, 65) == (1, *ok)
    assert ph.write1ByteTxRx(port, 3, 65, 0) == ok
    goal = ph.read4ByteTxRx(port, 1, 116)[0]
    assert ph.write4ByteTxRx(port, 1, 116, 5000) == (sdk.COMM_SUCCESS, 6)  # beyond Max_Position_Limit 4095
    assert ph.write1ByteTxRx(port, 1, 64, 2) == (sdk.COMM_SUCCESS, 4)  # Torque_Enable is 0 or 1
    assert ph.read4ByteTxRx(port, 1, 116)[0] == goal and ph.read1ByteTxRx(port, 1, 64)[0] == 0  # nothing stored
    assert ph.write2ByteTxRx(port, 1, 116, 100) == (sdk.COMM_SUCCESS, 5)  # half of a 4-byte item
    assert ph.write4ByteTxRx(port, 1, 132, 0) == (sdk.COMM_SUCCESS, 7)  # Present_Position is read-only
    assert ph.write1ByteTxRx(port, 1, 64, 1) == ok
    assert ph.write1ByteTxRx(port, 1, 9, 0) == (sdk.COMM_SUCCESS, 7)  # EEPROM is locked while torque is on
    assert ph.write1ByteTxRx(port, 1, 64, 0) == ok
    assert ph.readTxRx(port, 3, 700, 4)[1:] == (sdk.COMM_SUCCESS, 7)  # past the end of the table


def test_dxl_indirect_addresses_read_past_148(dxl):
    sdk, port, ph = dxl
    ok = (sdk.COMM_SUCCESS, 0)
    # XL330: Indirect Address 1..4 (168..175) point at Present_Position (132..135); data from 208.
    for k in range(4):
        assert ph.write2ByteTxRx(port, 5, 168 + 2 * k, 132 + k) == ok
    direct = ph.read4ByteTxRx(port, 5, 132)[0]
    indirect, result, error = ph.read4ByteTxRx(port, 5, 208)
    assert (result, error) == ok and abs(indirect - direct) < 30
    assert ph.write2ByteTxRx(port, 5, 168, 700) == (sdk.COMM_SUCCESS, 4)  # no such address to point at
    for k in range(4):  # back to the factory values (each points at its own data byte)
        assert ph.write2ByteTxRx(port, 5, 168 + 2 * k, 208 + k) == ok


def test_dxl_reg_write_then_action_leaves_the_next_read_intact(dxl):
    sdk, port, ph = dxl
    # The e-manual answers a unicast ACTION with a status packet; the SDK never reads it. A host
    # that talks again within the servo's return delay talks over it (not sent, see
    # robot_io/virtual/bus.py: VirtualBus.receive); one that waits longer gets it, and the SDK's next
    # exchange flushes it. The wait here keeps the test off the boundary between the two.
    for value in (1, 0, 1, 0):
        assert ph.regWriteTxRx(port, 4, 65, 1, [value]) == (sdk.COMM_SUCCESS, 0)
        assert ph.read1ByteTxRx(port, 4, 69)[0] == 1  # Registered_Instruction
        assert ph.action(port, 4) == sdk.COMM_SUCCESS
        time.sleep(0.01)
        assert ph.read1ByteTxRx(port, 4, 65) == (value, sdk.COMM_SUCCESS, 0)
        assert ph.read2ByteTxRx(port, 4, 0) == (1200, sdk.COMM_SUCCESS, 0)
    for i in (3, 4):  # broadcast ACTION: no status at all, so no wait is needed
        assert ph.regWriteTxRx(port, i, 65, 1, [1]) == (sdk.COMM_SUCCESS, 0)
    assert ph.action(port, sdk.BROADCAST_ID) == sdk.COMM_SUCCESS
    assert [ph.read1ByteTxRx(port, i, 65) for i in (3, 4)] == [(1, sdk.COMM_SUCCESS, 0)] * 2
    assert ph.write1ByteTxOnly(port, 3, 65, 0) == sdk.COMM_SUCCESS  # a WRITE whose status goes unread
    time.sleep(0.01)
    assert ph.read2ByteTxRx(port, 3, 0) == (1200, sdk.COMM_SUCCESS, 0)
    assert ph.write1ByteTxRx(port, 4, 65, 0) == (sdk.COMM_SUCCESS, 0)


def test_dxl_sync_and_fast_sync_read_and_sync_write(dxl):
    sdk, port, ph = dxl
    reader = sdk.GroupSyncRead(port, ph, 0, 2)  # Model_Number: the same bytes every time
    for i in IDS:
        assert reader.addParam(i)
    assert reader.txRxPacket() == sdk.COMM_SUCCESS
    assert {i: reader.getData(i, 0, 2) for i in IDS} == DXL_MODELS
    assert reader.fastSyncRead() == sdk.COMM_SUCCESS
    assert {i: reader.getData(i, 0, 2) for i in IDS} == DXL_MODELS
    positions = sdk.GroupSyncRead(port, ph, 132, 4)
    for i in IDS:
        positions.addParam(i)
    assert positions.fastSyncRead() == sdk.COMM_SUCCESS
    assert all(0 <= positions.getData(i, 132, 4) < 4096 for i in IDS)

    assert ph.write1ByteTxRx(port, 1, 64, 1) == (sdk.COMM_SUCCESS, 0)
    start = ph.read4ByteTxRx(port, 1, 132)[0]
    writer = sdk.GroupSyncWrite(port, ph, 116, 4)
    goal = start + 200
    assert writer.addParam(1, list(goal.to_bytes(4, "little")))
    assert writer.txPacket() == sdk.COMM_SUCCESS
    deadline = time.monotonic() + 5
    while abs(ph.read4ByteTxRx(port, 1, 132)[0] - goal) > 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert abs(ph.read4ByteTxRx(port, 1, 132)[0] - goal) <= 20, "the sync-written goal did not move the joint"
    assert ph.write1ByteTxRx(port, 1, 64, 0) == (sdk.COMM_SUCCESS, 0)


def test_dxl_bulk_and_fast_bulk_read_and_bulk_write(dxl):
    sdk, port, ph = dxl
    writer = sdk.GroupBulkWrite(port, ph)
    assert writer.addParam(3, 65, 1, [1])  # LED
    assert writer.addParam(5, 9, 1, [40])  # Return_Delay_Time (EEPROM, torque off)
    assert writer.txPacket() == sdk.COMM_SUCCESS
    assert ph.read1ByteTxRx(port, 3, 65)[0] == 1 and ph.read1ByteTxRx(port, 5, 9)[0] == 40
    # Ids, addresses and lengths chosen apart: the SDK's fast bulk read finds ids by value in its params.
    reader = sdk.GroupBulkRead(port, ph)
    assert reader.addParam(1, 0, 2) and reader.addParam(3, 65, 1) and reader.addParam(5, 9, 1)
    for read in (reader.txRxPacket, reader.fastBulkRead):
        assert read() == sdk.COMM_SUCCESS
        assert (reader.getData(1, 0, 2), reader.getData(3, 65, 1), reader.getData(5, 9, 1)) == (1060, 1, 40)
    writer = sdk.GroupBulkWrite(port, ph)
    writer.addParam(3, 65, 1, [0])
    writer.addParam(5, 9, 1, [250])
    assert writer.txPacket() == sdk.COMM_SUCCESS
    assert ph.read1ByteTxRx(port, 5, 9)[0] == 250


def test_dxl_reboot_factory_reset_and_clear(dxl):
    sdk, port, ph = dxl
    ok = (sdk.COMM_SUCCESS, 0)
    assert ph.write1ByteTxRx(port, 6, 9, 20) == ok  # EEPROM: survives a reboot
    assert ph.write1ByteTxRx(port, 6, 65, 1) == ok and ph.write1ByteTxRx(port, 6, 64, 1) == ok
    assert ph.reboot(port, 6) == ok
    assert [ph.read1ByteTxRx(port, 6, a)[0] for a in (9, 64, 65)] == [20, 0, 0]  # RAM back to defaults
    assert ph.write1ByteTxRx(port, 6, 64, 1) == ok
    assert ph.factoryReset(port, 6, 0x02) == (sdk.COMM_SUCCESS, 7)  # torque on locks EEPROM
    assert ph.write1ByteTxRx(port, 6, 64, 0) == ok
    assert ph.factoryReset(port, 6, 0x02) == ok  # all but ID and Baud_Rate
    assert ph.ping(port, 6) == (1200, *ok)
    assert ph.read1ByteTxRx(port, 6, 9)[0] == 250 and ph.read1ByteTxRx(port, 6, 8)[0] == 3
    assert ph.factoryReset(port, 6, 0x05)[1] == 4  # no such option
    assert ph.write1ByteTxRx(port, 2, 64, 1) == ok  # held still: Moving = 0
    deadline = time.monotonic() + 3
    while ph.read1ByteTxRx(port, 2, 122)[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ph.clearMultiTurn(port, 2) == ok
    assert ph.write1ByteTxRx(port, 2, 64, 0) == ok


def test_dxl_id_change_is_acknowledged_by_the_old_id(dxl):
    sdk, port, ph = dxl
    ok = (sdk.COMM_SUCCESS, 0)
    assert ph.write1ByteTxRx(port, 6, 7, 10) == ok
    assert ph.ping(port, 10) == (1200, *ok) and ph.ping(port, 6)[1] == sdk.COMM_RX_TIMEOUT
    assert ph.write1ByteTxRx(port, 10, 7, 6) == ok
    assert ph.ping(port, 6) == (1200, *ok)


def test_dxl_bad_crc_gets_a_crc_error_and_a_truncated_packet_does_not_deafen(dxl):
    sdk, port, ph = dxl
    packet = bytearray([0xFF, 0xFF, 0xFD, 0x00, 3, 7, 0, 0x02, 132, 0, 4, 0])  # READ Present_Position
    crc = ph.updateCRC(0, packet, len(packet))
    _raw(port, bytes(packet) + bytes([(crc & 0xFF) ^ 0x01, crc >> 8]))
    port.setPacketTimeout(11)
    status, result = ph.rxPacket(port, False)
    assert result == sdk.COMM_SUCCESS and status[4] == 3 and status[8] == 3  # from id 3: CRC error

    _raw(port, bytes([0xFF, 0xFF, 0xFD, 0x00, 1, 0xFF, 0x03, 0x02]))  # LEN 1023, then nothing
    time.sleep(0.05)
    assert _first_success(lambda: ph.ping(port, 1)[1] == sdk.COMM_SUCCESS) < 0.5


def test_dxl_factory_reset_all_returns_the_servo_to_id_1_at_57600(tmp_path, monkeypatch):
    sdk = _sdk("dynamixel_sdk", "dynamixel-sdk")
    with VirtualArm("dynamixel", link=tmp_path / "arm", camera_fps=0, ids=[5, 6],
                    models=["xl330-m288", "xl330-m288"]) as arm:
        port = _open(sdk, sdk.port_handler, arm.link, monkeypatch)
        ph = sdk.PacketHandler(2.0)
        assert ph.factoryReset(port, sdk.BROADCAST_ID, 0xFF)[0] == sdk.COMM_SUCCESS  # broadcast: not done
        assert ph.ping(port, 6)[1] == sdk.COMM_SUCCESS
        assert ph.factoryReset(port, 6, 0xFF) == (sdk.COMM_SUCCESS, 0)
        # Now ID 1 at 57,600 baud: silent on this 1 Mbaud bus, as on a real one.
        assert ph.ping(port, 6)[1] == sdk.COMM_RX_TIMEOUT and ph.ping(port, 1)[1] == sdk.COMM_RX_TIMEOUT
        assert ph.ping(port, 5)[1] == sdk.COMM_SUCCESS
        port.closePort()


# ---- Feetech STS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ft_server(tmp_path_factory):
    _sdk("scservo_sdk", "feetech-servo-sdk")
    yield from _served(tmp_path_factory, "feetech")


@pytest.fixture
def fts(ft_server, monkeypatch):
    sdk, port, handler = _client("scservo_sdk", "feetech-servo-sdk", ft_server, monkeypatch, 0)  # 0: STS words
    yield sdk, port, handler
    port.closePort()


def test_ft_ping_read_write_and_eeprom_agree_with_the_bus(fts):
    sdk, port, ph = fts
    for i in IDS:
        assert ph.ping(port, i) == (777, sdk.COMM_SUCCESS, 0)
    assert ph.ping(port, 9)[1] == sdk.COMM_RX_TIMEOUT
    assert ph.read1ByteTxRx(port, 1, 6) == (0, sdk.COMM_SUCCESS, 0)  # Baud_Rate 0: 1,000,000
    assert ph.write1ByteTxRx(port, 1, 41, 12) == (sdk.COMM_SUCCESS, 0)  # Acceleration
    assert ph.read1ByteTxRx(port, 1, 41) == (12, sdk.COMM_SUCCESS, 0)
    assert ph.write1ByteTxRx(port, 1, 41, 0) == (sdk.COMM_SUCCESS, 0)
    # Addresses past the listed table still answer (reading 0); an STS servo has no error to send.
    assert ph.readTxRx(port, 2, 200, 4) == ([0, 0, 0, 0], sdk.COMM_SUCCESS, 0)
    assert ph.readTxRx(port, 2, 250, 6)[1:] == (sdk.COMM_SUCCESS, 0)


def test_ft_reg_write_and_action(fts):
    sdk, port, ph = fts
    for value in (7, 3):
        assert ph.regWriteTxRx(port, 2, 41, 1, [value]) == (sdk.COMM_SUCCESS, 0)
        assert ph.read1ByteTxRx(port, 2, 41)[0] != value  # held until ACTION
        assert ph.action(port, 2) == sdk.COMM_SUCCESS  # unicast: the SDK waits for its status
        assert ph.read1ByteTxRx(port, 2, 41) == (value, sdk.COMM_SUCCESS, 0)
    assert ph.regWriteTxRx(port, 3, 41, 1, [9]) == (sdk.COMM_SUCCESS, 0)
    assert ph.action(port, sdk.BROADCAST_ID) == sdk.COMM_SUCCESS
    assert ph.read1ByteTxRx(port, 3, 41) == (9, sdk.COMM_SUCCESS, 0)
    for i in (2, 3):
        ph.write1ByteTxRx(port, i, 41, 0)


def test_ft_sync_read_and_sync_write(fts):
    sdk, port, ph = fts
    writer = sdk.GroupSyncWrite(port, ph, 41, 1)
    for i in IDS:
        assert writer.addParam(i, [10 + i])
    assert writer.txPacket() == sdk.COMM_SUCCESS
    reader = sdk.GroupSyncRead(port, ph, 41, 1)
    for i in IDS:
        assert reader.addParam(i)
    assert reader.txRxPacket() == sdk.COMM_SUCCESS
    assert {i: reader.getData(i, 41, 1) for i in IDS} == {i: 10 + i for i in IDS}
    positions = sdk.GroupSyncRead(port, ph, 56, 2)
    for i in IDS:
        positions.addParam(i)
    assert positions.txRxPacket() == sdk.COMM_SUCCESS
    assert all(0 <= positions.getData(i, 56, 2) < 4096 for i in IDS)
    writer = sdk.GroupSyncWrite(port, ph, 41, 1)
    for i in IDS:
        writer.addParam(i, [0])
    writer.txPacket()


def test_ft_goal_past_the_limit_is_acknowledged_and_the_joint_stops_at_it(fts):
    sdk, port, ph = fts
    ok = (sdk.COMM_SUCCESS, 0)
    assert ph.write2ByteTxRx(port, 1, 11, 2300) == ok  # Max_Position_Limit below the goal
    assert ph.write1ByteTxRx(port, 1, 40, 1) == ok
    assert ph.write2ByteTxRx(port, 1, 42, 5000) == ok  # no range flag in an STS status byte
    time.sleep(1.0)
    present = ph.read2ByteTxRx(port, 1, 56)[0]
    assert present <= 2300 + 20, f"joint went to {present}, past Max_Position_Limit 2300"
    assert ph.write1ByteTxRx(port, 1, 40, 0) == ok
    assert ph.write2ByteTxRx(port, 1, 11, 4095) == ok


def test_ft_id_change_is_acknowledged_by_the_old_id(fts):
    sdk, port, ph = fts
    ok = (sdk.COMM_SUCCESS, 0)
    assert ph.write1ByteTxRx(port, 6, 5, 10) == ok  # the SDK takes only a status from id 6
    assert ph.ping(port, 10) == (777, *ok) and ph.ping(port, 6)[1] == sdk.COMM_RX_TIMEOUT
    assert ph.write1ByteTxRx(port, 10, 5, 6) == ok
    assert ph.ping(port, 6) == (777, *ok)


def test_ft_bad_checksum_is_silent_and_a_truncated_packet_does_not_deafen(fts):
    sdk, port, ph = fts
    _raw(port, bytes([0xFF, 0xFF, 1, 2, 1, 0x00]))  # PING id 1 with a wrong checksum (0xFB is right)
    port.setPacketTimeout(6)
    assert ph.rxPacket(port)[1] == sdk.COMM_RX_TIMEOUT
    _raw(port, bytes([0xFF, 0xFF, 1, 0xFF, 0x02]))  # LEN 255, then nothing
    time.sleep(0.05)
    assert _first_success(lambda: ph.ping(port, 1)[1] == sdk.COMM_SUCCESS) < 0.5
