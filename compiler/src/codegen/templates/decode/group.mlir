    gpu.func @{{name}}(%ids: memref<?xf32>, %w: memref<?xf32>, %lists: memref<?xi32>, %counts: memref<?xi32>, %pos: memref<?xi32>, %eid: memref<?xi32>, %first: index) workgroup(%cnt: memref<1xi32, 3>) kernel {
      %bid = gpu.block_id x
      %tid = gpu.thread_id x
      %c0 = arith.constant 0 : index
      %cS = arith.constant {{s}} : index
      %cS1 = arith.constant {{last_slot}} : index
      %cE = arith.constant {{e}} : index
      %cstep = arith.constant {{step}} : index
      %z32 = arith.constant 0 : i32
      %one32 = arith.constant 1 : i32
      %m1 = arith.constant -1 : i32
      %zero = arith.constant 0.0 : f32
      %first64 = arith.index_cast %first : index to i64
      %cE64 = arith.index_cast %cE : index to i64
      %z64 = arith.constant 0 : i64
      %lister = arith.cmpi ult, %bid, %cE : index
      scf.if %lister {
        %tid0 = arith.cmpi eq, %tid, %c0 : index
        scf.if %tid0 {
          memref.store %z32, %cnt[%c0] : memref<1xi32, 3>
        }
        gpu.barrier
        %bid64 = arith.index_cast %bid : index to i64
        %lbase = arith.muli %bid, %cS : index
        scf.for %base = %c0 to %cS step %cstep {
{{lister_slots}}
{{lists}}
        }
        gpu.barrier
        scf.if %tid0 {
          %n = memref.load %cnt[%c0] : memref<1xi32, 3>
          memref.store %n, %counts[%bid] : memref<?xi32>
        }
      } else {
        %q = arith.subi %bid, %cE : index
        %qbase = arith.muli %q, %cstep : index
{{other_slots}}
{{positions}}
      }
      gpu.return
    }
