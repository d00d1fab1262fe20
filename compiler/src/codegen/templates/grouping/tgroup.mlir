    gpu.func @{{name}}(%ids: memref<?xf32>, %w: memref<?xf32>, %perm: memref<?xi32>, %rexp: memref<?xi32>, %pos: memref<?xi32>, %eid: memref<?xi32>, %ptrs: memref<?xi64>, %first: index, %lo: index, %hi: index, %m: index, %bound: index, %xg: i64, %win: i64, %hid: i64, %act: i64, %wout: i64, %out: i64) workgroup(%cnt: memref<{{experts}}xi32, 3>, %fill: memref<{{experts}}xi32, 3>, %tstart: memref<{{starts}}xi32, 3>) kernel {
      %tid = gpu.thread_id x
      %c0 = arith.constant 0 : index
      %c1 = arith.constant 1 : index
      %cT = arith.constant {{threads}} : index
      %cS = arith.constant {{s}} : index
      %cE = arith.constant {{experts}} : index
      %ck = arith.constant {{k}} : index
      %z32 = arith.constant 0 : i32
      %one32 = arith.constant 1 : i32
      %m1 = arith.constant -1 : i32
      %zero = arith.constant 0.0 : f32
      %first64 = arith.index_cast %first : index to i64
      %cE64 = arith.index_cast %cE : index to i64
      %z64 = arith.constant 0 : i64
      %b1 = arith.addi %bound, %c1 : index
      %rows = arith.muli %b1, %m : index
      %s0 = arith.addi %lo, %tid : index
      %tid0 = arith.cmpi eq, %tid, %c0 : index
      scf.for %e = %tid to %cE step %cT {
        memref.store %z32, %cnt[%e] : memref<{{experts}}xi32, 3>
        memref.store %z32, %fill[%e] : memref<{{experts}}xi32, 3>
      }
      scf.for %r = %tid to %rows step %cT {
        memref.store %z32, %perm[%r] : memref<?xi32>
        memref.store %z32, %rexp[%r] : memref<?xi32>
      }
      scf.for %s = %tid to %cS step %cT {
{{slot}}
        memref.store %m1, %pos[%s] : memref<?xi32>
        %l32 = arith.trunci %loc : i64 to i32
        %le = arith.select %local, %l32, %z32 : i32
        memref.store %le, %eid[%s] : memref<?xi32>
      }
      gpu.barrier
      scf.for %s = %s0 to %hi step %cT {
{{slot}}
        %used = arith.andi %local, %nz : i1
        scf.if %used {
          %li = arith.index_cast %loc : i64 to index
          %old = memref.atomic_rmw addi %one32, %cnt[%li] : (i32, memref<{{experts}}xi32, 3>) -> i32
        }
      }
      gpu.barrier
      scf.if %tid0 {
        %m32 = arith.index_cast %m : index to i32
        %mm1 = arith.subi %m32, %one32 : i32
        %total = scf.for %e = %c0 to %cE step %c1 iter_args(%acc = %z32) -> (i32) {
          memref.store %acc, %tstart[%e] : memref<{{starts}}xi32, 3>
          %c = memref.load %cnt[%e] : memref<{{experts}}xi32, 3>
          %c2 = arith.addi %c, %mm1 : i32
          %nt = arith.divui %c2, %m32 : i32
          %na = arith.addi %acc, %nt : i32
          scf.yield %na : i32
        }
        memref.store %total, %tstart[%cE] : memref<{{starts}}xi32, 3>
      }
      gpu.barrier
      scf.for %e = %tid to %cE step %cT {
        %ts32 = memref.load %tstart[%e] : memref<{{starts}}xi32, 3>
        %e1 = arith.addi %e, %c1 : index
        %te32 = memref.load %tstart[%e1] : memref<{{starts}}xi32, 3>
        %ts = arith.index_cast %ts32 : i32 to index
        %te = arith.index_cast %te32 : i32 to index
        %ex64 = arith.index_cast %e : index to i64
        scf.for %t = %ts to %te step %c1 {
{{expert_pointers}}
        }
      }
      %tot32 = memref.load %tstart[%cE] : memref<{{starts}}xi32, 3>
      %tot = arith.index_cast %tot32 : i32 to index
      scf.for %t = %tid to %bound step %cT {
        %spare = arith.cmpi uge, %t, %tot : index
        scf.if %spare {
{{spare_pointers}}
        }
      }
      scf.for %s = %s0 to %hi step %cT {
{{slot}}
        %used = arith.andi %local, %nz : i1
        scf.if %used {
          %li = arith.index_cast %loc : i64 to index
          %at32 = memref.atomic_rmw addi %one32, %fill[%li] : (i32, memref<{{experts}}xi32, 3>) -> i32
          %ts32 = memref.load %tstart[%li] : memref<{{starts}}xi32, 3>
          %ts = arith.index_cast %ts32 : i32 to index
          %rb = arith.muli %ts, %m : index
          %at = arith.index_cast %at32 : i32 to index
          %p = arith.addi %rb, %at : index
          %p32 = arith.index_cast %p : index to i32
          memref.store %p32, %pos[%s] : memref<?xi32>
          %tok = arith.divui %s, %ck : index
          %tok32 = arith.index_cast %tok : index to i32
          memref.store %tok32, %perm[%p] : memref<?xi32>
          %l32 = arith.trunci %loc : i64 to i32
          memref.store %l32, %rexp[%p] : memref<?xi32>
        }
      }
      gpu.return
    }
