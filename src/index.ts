/**
 * The kvmmu package: the VM (its KVM-ioctl-like API), errors, constants, the guest context that
 * guest programs run on, the guest spec types and the dirty-bitmap helpers. See docs/api.md.
 */
export { Vm } from "./vm.js";
export type {
  VmOptions,
  MemoryRegion,
  HostThreadOptions,
  WpName,
  MmuModeName,
  DirtyGfn,
  StopResult,
} from "./vm.js";
export { KvmError } from "./errors.js";
export type { Errno } from "./errors.js";
export {
  BUG,
  KVM_DIRTY_LOG_INITIALLY_SET,
  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
  KVM_MAX_VCPUS,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
  KVM_USER_MEM_SLOTS,
  PAGE_SIZE,
  ST,
} from "./kvm_host.js";
export type { BugName } from "./kvm_host.js";
export type { DirtyLogTimes } from "./mmu/dirty_log.js";
export { GUEST_PAGE_SIZE } from "./guest/context.js";
export type { GuestContext, GuestEntry } from "./guest/context.js";
export type { BuiltinGuestArgs, GuestArgs, ModuleGuestArgs } from "./workload/guest.js";
export type { MemstressArgs } from "./workload/memstress.js";
export type { DirtyLogGuestArgs, DirtyLogIncrGuestArgs, DirtyLogPaging } from "./workload/dirty_log_guest.js";
export type { KernbenchGuestArgs } from "./workload/kernbench_guest.js";
export type { GuestPagingArgs, KernelArea } from "./workload/guest_paging.js";
export {
  bitmap_weight,
  copyDirtyPages,
  harvestDirtyRingsInto,
  dirtyGfnArrays,
  dirtyPages,
  for_each_set_bit,
  hweight32,
  slotGeometry,
} from "./dirty_bitmap.js";
export type { DirtyGfnArrays } from "./dirty_bitmap.js";
export { MigrationSource } from "./migration/precopy.js";
export type { SourceOptions } from "./migration/precopy.js";
export { MigrationDestination } from "./migration/destination.js";
export type { DestinationOptions } from "./migration/destination.js";
export { logStrategy, LOG_MODES, DirtyRingLog, dirtyRingReap } from "./migration/log_sync.js";
export { calcDirtyRate, guestDirtyRate, DIRTY_RATE_MODES } from "./migration/dirtyrate.js";
export type {
  DirtyRateMode,
  DirtyRateOptions,
  DirtyRateResult,
  DirtyRateVcpu,
  GuestDirtyRateOptions,
} from "./migration/dirtyrate.js";
export { DirtyLimit, dirtylimit_set_throttle } from "./migration/dirtylimit.js";
export type { DirtyLimitOptions } from "./migration/dirtylimit.js";
export type { DirtyLogStrategy, LogMode } from "./migration/log_sync.js";
export { FAULTS, FaultInjector } from "./migration/fault.js";
export type { FaultKind } from "./migration/fault.js";
export type {
  DestinationReport,
  DirtyLimitReport,
  MigrationReport,
  RoundRecord,
  SwitchoverTimes,
} from "./migration/report.js";
export { MigrationState, MigrationStateError, MIGRATION_STATUSES } from "./migration/state.js";
export type { MigrationOutcome, MigrationStatus } from "./migration/state.js";
export { RateLimiter, BUFFER_DELAY_MS } from "./migration/rate_limit.js";
export type { MigrationClock } from "./migration/rate_limit.js";
export { CpuThrottle } from "./migration/throttle.js";
export { RamSaveState, RamLoadState } from "./migration/ram.js";
export type { SaveVMHandlers, LoadVMHandlers } from "./migration/ram.js";
export { migrateTo, migrateIncoming } from "./migration/migrate.js";
export type {
  GuestMigrationOptions,
  IncomingResult,
  MigrateIncomingOptions,
  MigrateToOptions,
  MigrationResult,
} from "./migration/migrate.js";
export { migrateLocal, migrateLocalForked } from "./migration/local.js";
export type { ForkableOptions, LocalMigrationResult, MigrateLocalOptions } from "./migration/local.js";
export type { PostcopyStats } from "./migration/postcopy.js";
export type { Reconnection, RecoverConnection } from "./migration/recover.js";
export type { Incoming } from "./migration/auth.js";
export { connectOutgoing, listenIncoming } from "./migration/auth.js";
export { ByteReader, MigrationError } from "./migration/stream.js";
export type { MigErrno } from "./migration/stream.js";
export { createGuestVm, layoutFor, runGuest, runAndCheck, pageHashes } from "./migration/guest_vm.js";
export type { GuestLayout, GuestVm } from "./migration/guest_vm.js";
