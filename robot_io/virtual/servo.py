"""One virtual servo's control-table memory, laid out and initialised from its model's table.

Family-neutral: the byte coding comes from the family (robot_io/servo_family.py), and what the
family's firmware adds (memory size, factory values it sets, write checks) from its firmware object
(robot_io/<family>/virtual_servo.py).
"""

from __future__ import annotations


class VirtualServo:
    def __init__(self, servo_id: int, firmware, model, baud_code: int):
        self.firmware, self.family, self.model = firmware, firmware.family, model
        size = firmware.memory_size(model)
        self.memory = bytearray(size)
        self.writable = bytearray(size)  # 1 where a RW register lives
        self.register_at: list = [None] * size  # the register each byte belongs to
        for reg in model.registers.values():
            for a in range(reg.address, reg.address + reg.size):
                self.register_at[a] = reg
            if reg.access == "RW":
                self.writable[reg.address:reg.address + reg.size] = b"\x01" * reg.size
        self.eeprom_end = model.registers["Torque_Enable"].address  # both families: EEPROM below it
        # Indirect Data byte -> address of its Indirect Address register (models that have them).
        self.indirect = {data + k: first + 2 * k for first, data, count in getattr(model, "indirect", ())
                         for k in range(count)}
        self.indirect_start = min(self.indirect, default=size)
        self.factory()
        self.set("ID", servo_id)
        self.set("Baud_Rate", baud_code)

    def factory(self) -> None:
        """Every register at its factory value, as a new servo (or a factory reset) has it."""
        self.memory[:] = bytes(len(self.memory))
        for name, reg in self.model.registers.items():
            self.set(name, reg.default)
        self.firmware.factory(self)  # what the firmware itself reports (version, supply voltage)
        self.registered: tuple[int, bytes] | None = None  # REG_WRITE held until ACTION
        self.set("Present_Temperature", 30)

    def reboot(self) -> None:
        """Power cycle: EEPROM kept, RAM back to its defaults (torque off, errors cleared)."""
        eeprom = bytes(self.memory[:self.eeprom_end])
        self.factory()
        self.memory[:self.eeprom_end] = eeprom

    def factory_reset(self, keep: tuple[str, ...]) -> None:
        kept = {name: self.get(name) for name in keep}
        self.factory()
        for name, value in kept.items():
            self.set(name, value)

    @property
    def id(self) -> int:
        return self.get("ID")

    @property
    def return_delay_s(self) -> float:
        return self.get("Return_Delay_Time") * 2e-6

    def get(self, name: str, memory: bytearray | None = None) -> int:
        reg = self.model.registers[name]
        memory = self.memory if memory is None else memory
        return self.family.decode(self.model, reg, bytes(memory[reg.address:reg.address + reg.size]))

    def set(self, name: str, value: int) -> None:
        reg = self.model.registers[name]
        self.memory[reg.address:reg.address + reg.size] = self.family.encode(self.model, reg, value)

    def target(self, address: int) -> int:
        """The byte an access to `address` reaches: itself, or where its Indirect Address points."""
        pointer = self.indirect.get(address)
        if pointer is None:
            return address
        target = int.from_bytes(self.memory[pointer:pointer + 2], "little")
        return address if target in self.indirect or target >= len(self.memory) else target

    def read(self, address: int, size: int) -> bytes | None:
        if size < 1 or address + size > len(self.memory):
            return None
        if address + size <= self.indirect_start:
            return bytes(self.memory[address:address + size])
        return bytes(self.memory[self.target(a)] for a in range(address, address + size))

    def write(self, address: int, data: bytes) -> bool:
        """Store `data`; False (and nothing stored) if any byte is outside the table or read-only."""
        end = address + len(data)
        if not data or end > len(self.memory) or not all(self.writable[address:end]):
            return False
        self.memory[address:end] = data
        return True

    def covers(self, address: int, data: bytes, name: str) -> bool:
        """Whether a write of `data` at `address` spans the whole register `name`."""
        reg = self.model.registers[name]
        return address <= reg.address and address + len(data) >= reg.address + reg.size
