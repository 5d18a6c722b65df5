"""Control table of the Feetech STS3215 (SO-100/SO-101 arms), from Feetech's STS memory table.

STS servos store words little-endian (address 2 reads 0). Signed registers are sign-magnitude with
the sign bit given per register. Names match the Dynamixel tables where the meaning is the same
(Torque_Enable, Goal_Position, Present_Position, Min/Max_Position_Limit, Return_Delay_Time ...).
Positions are 4096 ticks per turn, 2048 at the centre. Addresses below 40 are EEPROM; Lock
(address 55) = 0 makes EEPROM writes persist across power cycles.

Model_Number reads addresses 3-4 (servo major/minor version) as one little-endian word: 777 for
the STS3215. Return_Delay_Time (address 7) is in units of 2 us. Its default here, 250 (500 us), is
what SO-101 builders find on delivered units (Feetech's tables describe address 7 differently
across versions); lower it to 0 for fast loops (docs/serial.md).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Register:
    address: int
    size: int
    access: str = "RW"  # "R" or "RW"
    sign_bit: int | None = None  # sign-magnitude sign bit, None for unsigned
    default: int = 0


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    number: int
    registers: dict[str, Register]
    byteorder: str = "little"  # STS: little-endian; SCS series: big-endian


R, RW = "R", "RW"

_STS3215 = {
    "Firmware_Major_Version": Register(0, 1, R, default=3),
    "Firmware_Minor_Version": Register(1, 1, R, default=10),
    "Endianness": Register(2, 1, R, default=0),  # "END": 0 little-endian, 1 big-endian
    "Model_Number": Register(3, 2, R, default=777),
    "ID": Register(5, 1, RW, default=1),
    "Baud_Rate": Register(6, 1, RW, default=0),  # 0: 1M, 1: 500k, 2: 250k, 3: 128k, 4: 115200 ...
    "Return_Delay_Time": Register(7, 1, RW, default=250),  # x 2 us
    "Status_Return_Level": Register(8, 1, RW, default=1),  # 0: reply to PING/READ only, 1: all
    "Min_Position_Limit": Register(9, 2, RW, default=0),
    "Max_Position_Limit": Register(11, 2, RW, default=4095),
    "Max_Temperature_Limit": Register(13, 1, RW, default=70),
    "Max_Voltage_Limit": Register(14, 1, RW, default=140),  # x 0.1 V
    "Min_Voltage_Limit": Register(15, 1, RW, default=40),
    "Max_Torque_Limit": Register(16, 2, RW, default=1000),  # x 0.1 %
    "Phase": Register(18, 1, RW, default=12),
    "Unloading_Condition": Register(19, 1, RW, default=44),
    "LED_Alarm_Condition": Register(20, 1, RW, default=47),
    "P_Coefficient": Register(21, 1, RW, default=32),
    "D_Coefficient": Register(22, 1, RW, default=32),
    "I_Coefficient": Register(23, 1, RW, default=0),
    "Minimum_Startup_Force": Register(24, 2, RW, default=16),
    "CW_Dead_Zone": Register(26, 1, RW, default=1),
    "CCW_Dead_Zone": Register(27, 1, RW, default=1),
    "Protection_Current": Register(28, 2, RW, default=500),
    "Angular_Resolution": Register(30, 1, RW, default=1),
    "Homing_Offset": Register(31, 2, RW, sign_bit=11),
    "Operating_Mode": Register(33, 1, RW, default=0),  # 0: position, 1: velocity, 2: PWM, 3: step
    "Protective_Torque": Register(34, 1, RW, default=20),
    "Protection_Time": Register(35, 1, RW, default=200),
    "Overload_Torque": Register(36, 1, RW, default=80),
    "Velocity_closed_loop_P_proportional_coefficient": Register(37, 1, RW, default=10),
    "Over_Current_Protection_Time": Register(38, 1, RW, default=200),
    "Velocity_closed_loop_I_integral_coefficient": Register(39, 1, RW, default=200),
    "Torque_Enable": Register(40, 1, RW),
    "Acceleration": Register(41, 1, RW),
    "Goal_Position": Register(42, 2, RW, sign_bit=15),
    "Goal_Time": Register(44, 2, RW),
    "Goal_Velocity": Register(46, 2, RW, sign_bit=15),
    "Torque_Limit": Register(48, 2, RW, default=1000),
    "Lock": Register(55, 1, RW, default=1),
    "Present_Position": Register(56, 2, R, sign_bit=15),
    "Present_Velocity": Register(58, 2, R, sign_bit=15),
    "Present_Load": Register(60, 2, R, sign_bit=10),
    "Present_Voltage": Register(62, 1, R),  # x 0.1 V
    "Present_Temperature": Register(63, 1, R),
    "Status": Register(65, 1, R),  # alarm flags, same bits as the status packet's error byte
    "Moving": Register(66, 1, R),
    "Present_Current": Register(69, 2, R, sign_bit=15),
}

MODELS: dict[str, Model] = {"sts3215": Model("sts3215", 777, _STS3215)}
# Where every STS/SCS model keeps its model number: the ping reply carries none, so a client reads it.
MODEL_NUMBER = _STS3215["Model_Number"]
BY_NUMBER: dict[int, Model] = {m.number: m for m in MODELS.values()}

# Baud_Rate register value -> bits per second.
BAUD_RATES = {0: 1_000_000, 1: 500_000, 2: 250_000, 3: 128_000, 4: 115_200, 5: 76_800, 6: 57_600, 7: 38_400}
