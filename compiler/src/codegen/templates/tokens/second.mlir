    gpu.func @{{name}}(%act: memref<?xvector<4xi32>>, %wt: memref<?xvector<4xi32>>, %ids: memref<?xf32>, %w: memref<?xf32>, %out: memref<?x{{y}}>, %first: index) workgroup(%parts: memref<{{parts}}xf32, 3>) kernel {
      %tok = gpu.block_id x
      %nb = gpu.block_id y
      %tid = gpu.thread_id x
      %c32 = arith.constant 32 : index
      %c0 = arith.constant 0 : index
      %warp = arith.divui %tid, %c32 : index
      %lane = arith.remui %tid, %c32 : index
      %zero = arith.constant 0.0 : f32
      %ck = arith.constant {{k}} : index
      %j = arith.remui %warp, %ck : index
      %g = arith.divui %warp, %ck : index
      %cG = arith.constant {{groups}} : index
      %active = arith.cmpi ult, %g, %cG : index
      %cbc = arith.constant {{block_columns}} : index
      %b0 = arith.muli %nb, %cbc : index
      %cC = arith.constant {{c}} : index
      %gc = arith.muli %g, %cC : index
      %cbase = arith.addi %b0, %gc : index
      %hlast = arith.constant {{last_column}} : index
      %cH = arith.constant {{hidden}} : index
      %cW = arith.constant {{words}} : index
      %z64 = arith.constant 0 : i64
      %tk = arith.muli %tok, %ck : index
      %sj = arith.addi %tk, %j : index
      scf.if %active {
{{slot_check}}
        %lk = arith.select %ok, %loc, %z64 : i64
        %e = arith.index_cast %lk : i64 to index
        %eH = arith.muli %e, %cH : index
        %ab = arith.muli %sj, %cW : index
{{rows}}
{{dot}}
        %lane0 = arith.cmpi eq, %lane, %c0 : index
        scf.if %lane0 {
{{outputs}}
        }
      }
      gpu.barrier
{{add_slots}}
      gpu.return
    }
