    gpu.func @{{name}}(%src: memref<?xvector<4xi32>>, %lists: memref<?xi32>, %counts: memref<?xi32>, %dst: memref<?xvector<4xi32>>) workgroup(%base: memref<1xi32, 3>) kernel attributes {nvvm.maxntid = array<i32: {{threads}}, 1, 1>} {
      %e = gpu.block_id x
      %y = gpu.block_id y
      %Y = gpu.grid_dim y
      %tid = gpu.thread_id x
      %c0 = arith.constant 0 : index
      %c32 = arith.constant 32 : index
      %cT = arith.constant {{threads}} : index
      %cWP = arith.constant {{warps}} : index
      %cS = arith.constant {{slots}} : index
      %cdiv = arith.constant {{div}} : index
      %cW = arith.constant {{words}} : index
      %cLW = arith.constant {{lane_words}} : index
      %z32 = arith.constant 0 : i32
      %t0 = arith.cmpi eq, %tid, %c0 : index
      scf.if %t0 {
        memref.store %z32, %base[%c0] : memref<1xi32, 3>
      }
      gpu.barrier
      scf.for %j = %tid to %e step %cT {
        %cj = memref.load %counts[%j] : memref<?xi32>
        %old = memref.atomic_rmw addi %cj, %base[%c0] : (i32, memref<1xi32, 3>) -> i32
      }
      gpu.barrier
      %rb32 = memref.load %base[%c0] : memref<1xi32, 3>
      %rb = arith.index_cast %rb32 : i32 to index
      %cnt32 = memref.load %counts[%e] : memref<?xi32>
      %cnt = arith.index_cast %cnt32 : i32 to index
      %warp = arith.divui %tid, %c32 : index
      %lane = arith.remui %tid, %c32 : index
      %y8 = arith.muli %y, %cWP : index
      %i0 = arith.addi %y8, %warp : index
      %istep = arith.muli %Y, %cWP : index
      %lbase = arith.muli %e, %cS : index
      scf.for %i = %i0 to %cnt step %istep {
        %l = arith.addi %lbase, %i : index
        %s32 = memref.load %lists[%l] : memref<?xi32>
        %s = arith.index_cast %s32 : i32 to index
        %srow = arith.divui %s, %cdiv : index
        %from = arith.muli %srow, %cW : index
        %drow = arith.addi %rb, %i : index
        %to = arith.muli %drow, %cW : index
        scf.for %w = %lane to %cW step %cLW {
{{loads}}
{{stores}}
        }
      }
      gpu.return
    }
