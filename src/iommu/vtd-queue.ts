/**
 * Queued invalidation's descriptors (Intel VT-d rev 4.x, 6.5.2 "Queued Invalidation
 * Interface"; QEMU's `vtd_process_inv_desc` and its `vtd_process_*_desc`): the legacy
 * 128-bit descriptors this unit takes, each checked for the reserved bits and
 * granularities the spec gives it. Nothing is cached here (every walk reads the tables),
 * so a valid invalidation has nothing left to do; a wait descriptor writes its status
 * and raises its completion event.
 * @module
 */

/** Descriptor types (6.5.2, bits 3:0 and, in rev 3.0 and later, 11:9 as type bits 6:4). */
export const DESC = {
  CONTEXT_CACHE: 1,
  IOTLB: 2,
  DEVICE_TLB: 3,
  INTERRUPT_ENTRY_CACHE: 4,
  WAIT: 5,
} as const

/** What a wait descriptor asks for (6.5.2.8): a status write, an interrupt. */
export interface WaitRequest {
  /** SW: write `data` (32 bits) to `address`. */
  readonly statusWrite: { readonly address: number; readonly data: number } | undefined
  /** IF: set ICS.IWC and raise the invalidation completion event. */
  readonly interrupt: boolean
}

/** A descriptor as this unit takes it: done, a wait to carry out, or refused (an Invalidation Queue Error). */
export type Descriptor = { readonly kind: 'done' } | { readonly kind: 'wait'; readonly wait: WaitRequest } | { readonly kind: 'invalid'; readonly why: string }

/** Most address-mask bits a page-selective invalidation may give (CAP.MAMV, 10.4.2). */
const MAMV = 18n

/** Decodes descriptor `lo`, `hi` for a unit with (or without) interrupt remapping. */
export function decodeDescriptor(lo: bigint, hi: bigint, interruptRemapping: boolean): Descriptor {
  const type = Number(lo & 0xfn)
  const done = { kind: 'done' } as const
  const invalid = (why: string): Descriptor => ({ kind: 'invalid', why })
  switch (type) {
    case DESC.CONTEXT_CACHE: {
      // 6.5.2.2: G 5:4 (01 global, 10 domain, 11 device), DID 31:16, SID 47:32, FM 49:48; reserved 15:6, 63:50 and all of hi.
      if ((lo & 0xfffc_0000_0000_ffc0n) !== 0n || hi !== 0n) return invalid('context-cache invalidation with a reserved bit set')
      if (((lo >> 4n) & 3n) === 0n) return invalid('context-cache invalidation of granularity 0 (reserved)')
      return done
    }
    case DESC.IOTLB: {
      // 6.5.2.3: G 5:4, DW 6, DR 7, DID 31:16; hi ADDR 63:12, IH 6, AM 5:0; reserved 15:8, 63:32 and hi 11:7.
      if ((lo & 0xffff_ffff_0000_ff00n) !== 0n || (hi & 0xf80n) !== 0n) return invalid('IOTLB invalidation with a reserved bit set')
      const g = (lo >> 4n) & 3n
      if (g === 0n) return invalid('IOTLB invalidation of granularity 0 (reserved)')
      if (g === 3n && (hi & 0x3fn) > MAMV) return invalid(`page-selective IOTLB invalidation with address mask ${hi & 0x3fn} above MAMV ${MAMV}`)
      return done
    }
    case DESC.INTERRUPT_ENTRY_CACHE: {
      // 6.5.2.7: G 4, IM 31:27, IIDX 47:32; reserved 26:5, 63:48 and hi. Only with interrupt remapping (ECAP.IR).
      if (!interruptRemapping) return invalid('interrupt entry cache invalidation on a unit without interrupt remapping')
      if ((lo & 0xffff_0000_07ff_ffe0n) !== 0n || hi !== 0n) return invalid('interrupt entry cache invalidation with a reserved bit set')
      return done
    }
    case DESC.WAIT: {
      // 6.5.2.8: IF 4, SW 5, FN 6, status data 63:32; hi status address 63:2. Reserved: 31:7 and hi 1:0.
      if ((lo & 0xffff_ff80n) !== 0n || (hi & 3n) !== 0n) return invalid('invalidation wait with a reserved bit set')
      const sw = (lo & 0x20n) !== 0n
      return {
        kind: 'wait',
        wait: {
          statusWrite: sw ? { address: Number(hi & ~3n), data: Number(lo >> 32n) } : undefined,
          interrupt: (lo & 0x10n) !== 0n,
        },
      }
    }
    case DESC.DEVICE_TLB:
      return invalid('device-TLB invalidation: ECAP.DT is 0 (no device-TLBs)')
    default:
      // 0 is no descriptor; 6 and 7 (PASID) need scalable mode (ECAP.SMTS is 0); 8-15 are reserved.
      return invalid(`descriptor type ${type} is not one this unit supports`)
  }
}
