        %gsize = arith.constant {{size}} : index
        %ngroups = arith.constant {{groups}} : index
        %kgroups = arith.constant {{keep}} : index
        %z64 = arith.constant 0 : i64
        %o64 = arith.constant 1 : i64
        %mask = scf.for %s = %c0 to %kgroups step %c1 iter_args(%mk = %z64) -> (i64) {
          %bestg:2 = scf.for %q = %c0 to %ngroups step %c1 iter_args(%bgv = %ninf, %bgi = %c0) -> (f32, index) {
            %gb = arith.muli %q, %gsize : index
            %top:2 = scf.for %u = %c0 to %gsize step %c1 iter_args(%m1 = %ninf, %m2 = %ninf) -> (f32, f32) {
              %j = arith.addi %gb, %u : index
              %o = arith.addi %base, %j : index
              %v = memref.load %a0[%o] : {{m_l}}
{{score}}
              %gt1 = arith.cmpf ogt, %ch, %m1 : f32
              %gt2 = arith.cmpf ogt, %ch, %m2 : f32
              %n2a = arith.select %gt2, %ch, %m2 : f32
              %n2 = arith.select %gt1, %m1, %n2a : f32
              %n1 = arith.select %gt1, %ch, %m1 : f32
              scf.yield %n1, %n2 : f32, f32
            }
            {{top}}
            %q64 = arith.index_cast %q : index to i64
            %qbit = arith.shli %o64, %q64 : i64
            %qh = arith.andi %mk, %qbit : i64
            %qfree = arith.cmpi eq, %qh, %z64 : i64
            %qbetter = arith.cmpf ogt, %gs, %bgv : f32
            %qtake = arith.andi %qfree, %qbetter : i1
            %nbgv = arith.select %qtake, %gs, %bgv : f32
            %nbgi = arith.select %qtake, %q, %bgi : index
            scf.yield %nbgv, %nbgi : f32, index
          }
          %bg64 = arith.index_cast %bestg#1 : index to i64
          %bgbit = arith.shli %o64, %bg64 : i64
          %nmk = arith.ori %mk, %bgbit : i64
          scf.yield %nmk : i64
        }
