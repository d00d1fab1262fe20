    gpu.func @{{name}}(%src: memref<?x{{src}}>, %wt: memref<?xvector<4xi32>>, %lists: memref<?xi32>, %counts: memref<?xi32>, %dst: memref<?x{{mid}}>) workgroup(%xs: memref<{{staged_floats}}xf32, 3>) kernel {
      %e = gpu.block_id y
      %nb = gpu.block_id x
      %tid = gpu.thread_id x
      %c0 = arith.constant 0 : index
      %c32 = arith.constant 32 : index
      %c256 = arith.constant 256 : index
      %cR = arith.constant {{r}} : index
      %cKC = arith.constant {{kc}} : index
      %cK = arith.constant {{din}} : index
      %cS = arith.constant {{slots}} : index
      %cN = arith.constant {{dout}} : index
      %cper = arith.constant {{per}} : index
      %cdiv = arith.constant {{div}} : index
      %zero = arith.constant 0.0 : f32
      %warp = arith.divui %tid, %c32 : index
      %lane = arith.remui %tid, %c32 : index
      %cnt32 = memref.load %counts[%e] : memref<?xi32>
      %cnt = arith.index_cast %cnt32 : i32 to index
      %any = arith.cmpi ugt, %cnt, %c0 : index
      scf.if %any {
{{columns}}
        %lbase = arith.muli %e, %cS : index
        scf.for %r0 = %c0 to %cnt step %cR {
          %left = arith.subi %cnt, %r0 : index
          %rows = arith.minui %left, %cR : index
{{bodies}}
        }
      }
      gpu.return
    }
